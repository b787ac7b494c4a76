//! Porter's end-to-end suite, written once and run against every relay binary.
//!
//! Each case is an `async fn(Binary)`: it starts the binary under test with a generated
//! config (see [`porter_test_support::Porter`]) and drives it with real QUIC peers
//! (quinn), plain UDP sockets, a `redis-server` and an mTLS Agones test allocator, all on
//! loopback. A driver's `tests/e2e.rs` is one line that makes every case a `#[test]`:
//!
//! ```text
//! porter_e2e::suite!(env!("CARGO_BIN_EXE_porter"), "porter");
//! ```
//!
//! The tests keep the case names, in modules named after the files that hold them:
//! `cases::routes_by_sni_exact_wildcard_and_default`, `control_cases::..`,
//! `agones_cases::..`, `reload_cases::..`, `edge_cases::..`, `fd_cases::..`,
//! `scale_cases::..`, `shard_cases::..`, `directory_cases::..`, `transparent_cases::..` (the latter build
//! their own network namespaces, as root).
//!
//! The peers the cases use are public too: [`Pki`], [`EchoServer`], [`client_endpoint`],
//! [`connect`], [`echo`], [`UdpSink`], [`Nat`].

use std::future::Future;

pub use peers::{
    captured_first_flights, client_endpoint, client_endpoint_on, connect, echo, EchoServer, Nat,
    Pki, UdpSink, ALPN, WHO_AM_I,
};
pub use porter_test_support::Binary;

#[doc(hidden)]
pub mod agones_cases;
#[doc(hidden)]
pub mod balance_cases;
#[doc(hidden)]
pub mod cases;
#[doc(hidden)]
pub mod control_cases;
#[doc(hidden)]
pub mod directory_cases;
#[doc(hidden)]
pub mod edge_cases;
#[doc(hidden)]
pub mod fd_cases;
#[doc(hidden)]
pub mod ngtcp2_cases;
mod peers;
#[doc(hidden)]
pub mod reload_cases;
#[doc(hidden)]
pub mod scale_cases;
#[doc(hidden)]
pub mod shard_cases;
#[doc(hidden)]
pub mod transparent_cases;

/// Runs one case against `binary` on the runtime each case had as a
/// `#[tokio::test(flavor = "multi_thread", worker_threads = 2)]`.
///
/// # Panics
/// If the runtime cannot be built, or when the case fails.
pub fn run<F: Future<Output = ()>>(binary: Binary, case: impl FnOnce(Binary) -> F) {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime for an end-to-end case")
        .block_on(case(binary));
}

/// Makes every case of the suite a `#[test]` against the binary at `$path` named
/// `$name`: `porter_e2e::suite!(env!("CARGO_BIN_EXE_porter"), "porter");`.
#[macro_export]
macro_rules! suite {
    ($path:expr, $name:expr $(,)?) => {
        $crate::__with_cases!(__tests($path, $name));
    };
}

/// The list of every case, by module: calls `$crate::$callback!` with `($args)` and then
/// `module { case, .. }` for each module. The one list the suite is made from; the test
/// `every_case_is_in_the_suite` checks it against the case files.
#[doc(hidden)]
#[macro_export]
macro_rules! __with_cases {
    ($callback:ident ( $($args:tt)* )) => {
        $crate::$callback! {
            ($($args)*)
            cases {
                routes_by_sni_exact_wildcard_and_default,
                client_hello_spanning_two_initials,
                migration_and_nat_rebinding_keep_the_backend,
                the_backend_sees_each_move_as_a_new_address,
                a_forged_datagram_is_not_amplified_and_the_transfer_continues,
                quic_lb_keeps_a_client_that_changes_address_and_cid_on_its_backend,
                retry_server_works,
                unknown_sni_is_refused_fast,
                many_connections_then_nothing_left,
                corpus_replay_reaches_the_right_backend,
                malformed_config_names_the_problem,
                port_in_use_is_a_clear_error,
                unreachable_backend_is_logged,
                sigterm_exits_cleanly,
            }
            control_cases {
                a_route_set_on_one_instance_routes_traffic_through_another,
                after_a_redis_outage_instances_converge_and_keep_every_route,
                api_over_http_checks_the_token_and_the_body_limit,
                a_public_api_without_a_token_refuses_to_start,
                metrics_follow_traffic_and_sessions_page,
            }
            balance_cases {
                weights_split_new_connections,
                client_ip_hash_keeps_one_ip_on_one_backend,
                unhealthy_backends_leave_and_rejoin_the_rotation,
            }
            agones_cases {
                players_fill_servers_in_order_then_fleet_is_full,
                slow_or_down_allocator_then_recovery,
                allocate_endpoint_adds_a_temporary_route,
                a_game_servers_server_id_label_keeps_a_moving_player_on_it,
                allocation_budgets_bound_a_flood_of_initials,
            }
            ngtcp2_cases {
                ngtcp2_v1_download,
                ngtcp2_v2_download,
                ngtcp2_change_local_addr,
                ngtcp2_nat_rebinding,
                ngtcp2_retry_server,
                ngtcp2_migration_beside_another_session,
            }
            reload_cases {
                editing_the_config_in_place_adds_a_route,
                renaming_a_file_over_the_config_adds_a_route,
                a_configmap_symlink_swap_adds_a_route,
                sighup_reloads_the_config,
                an_invalid_edit_is_reported_and_changes_nothing,
                removed_targets_drain_or_close_as_configured,
            }
            edge_cases {
                api_refuses_stalled_cross_site_and_rebinding_requests,
                network_text_in_logs_is_escaped,
                a_route_to_the_relays_own_address_is_refused,
                a_client_connects_through_a_flood_of_forged_initials,
            }
            directory_cases {
                an_l4_balancer_moving_a_connection_to_another_instance_keeps_it_with_the_directory,
                ngtcp2_download_moved_to_another_instance_keeps_it_with_the_directory,
                with_redis_stopped_the_directory_is_down_and_known_connections_flow,
            }
            shard_cases {
                a_client_that_moves_to_a_port_of_another_shard_keeps_its_backend,
                a_nat_rebinding_onto_another_shard_keeps_its_backend,
            }
            scale_cases {
                replies_to_many_clients_leave_in_batches,
                an_l4_balancer_moving_a_connection_to_another_instance_keeps_it_with_quic_lb,
            }
            fd_cases {
                a_flood_of_initials_under_a_low_fd_limit_is_refused_by_name_and_the_relay_keeps_serving,
                api_accept_errors_under_a_low_fd_limit_back_off_quietly,
                a_datagram_from_the_relays_own_upstream_socket_is_dropped,
                the_drain_deadline_ends_the_process_while_the_listener_is_saturated,
                a_socket_the_system_refuses_is_a_named_refusal,
            }
            transparent_cases {
                the_backend_sees_each_clients_own_address,
                transparent_mode_without_cap_net_admin_refuses_to_start,
            }
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __tests {
    (($path:expr, $name:expr) $($module:ident { $($case:ident),* $(,)? })*) => {
        $(
            mod $module {
                $(
                    #[test]
                    fn $case() {
                        $crate::run(
                            $crate::Binary { path: $path, name: $name },
                            $crate::$module::$case,
                        );
                    }
                )*
            }
        )*
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __names {
    (() $($module:ident { $($case:ident),* $(,)? })*) => {
        &[$($(concat!(stringify!($module), "::", stringify!($case)),)*)*]
    };
}

#[cfg(test)]
mod tests {
    /// Every `pub async fn` of the case files is in [`__with_cases!`], once: a case added
    /// to a file but not to the list would silently not run.
    #[test]
    fn every_case_is_in_the_suite() {
        let listed: &[&str] = crate::__with_cases!(__names());
        let mut found: Vec<String> = [
            ("balance_cases", include_str!("balance_cases.rs")),
            ("cases", include_str!("cases.rs")),
            ("control_cases", include_str!("control_cases.rs")),
            ("agones_cases", include_str!("agones_cases.rs")),
            ("ngtcp2_cases", include_str!("ngtcp2_cases.rs")),
            ("reload_cases", include_str!("reload_cases.rs")),
            ("edge_cases", include_str!("edge_cases.rs")),
            ("scale_cases", include_str!("scale_cases.rs")),
            ("shard_cases", include_str!("shard_cases.rs")),
            ("fd_cases", include_str!("fd_cases.rs")),
            ("transparent_cases", include_str!("transparent_cases.rs")),
            ("directory_cases", include_str!("directory_cases.rs")),
        ]
        .iter()
        .flat_map(|(module, text)| {
            text.lines()
                .filter_map(|l| l.strip_prefix("pub async fn "))
                .map(move |l| format!("{module}::{}", &l[..l.find('(').unwrap_or(l.len())]))
        })
        .collect();
        let mut listed: Vec<String> = listed.iter().map(|s| (*s).to_owned()).collect();
        found.sort();
        listed.sort();
        assert_eq!(listed, found);
    }
}
