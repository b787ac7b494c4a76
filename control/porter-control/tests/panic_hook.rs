//! A panicking task ends the process (`cli::install_panic_hook`): the test runs itself
//! again as a child (the child mode lives only in this test binary), whose tokio task
//! panics while the main task would otherwise go on; the child must exit with code 70 and
//! log the panic.

use std::process::Command;
use std::time::Duration;

const CHILD: &str = "PORTER_PANIC_HOOK_TEST_CHILD";

#[test]
fn a_panicking_task_ends_the_process_with_code_70_and_a_log_line() {
    if std::env::var_os(CHILD).is_some() {
        child();
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_panicking_task_ends_the_process_with_code_70_and_a_log_line",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(porter_control::cli::PANIC_EXIT_CODE),
        "{stderr}"
    );
    assert!(stderr.contains("ERROR"), "{stderr}");
    assert!(
        stderr.contains("relay task failed on purpose; the process exits with code 70"),
        "{stderr}"
    );
    assert!(stderr.contains("panic_hook.rs"), "{stderr}");
    assert!(!stderr.contains("still running"), "{stderr}");
}

/// The child: logging as the binaries set it up, the hook, and a runtime whose task
/// panics; without the hook the runtime would swallow the panic and this would print
/// `still running` and return normally.
fn child() -> ! {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    porter_control::cli::install_panic_hook();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        let task = tokio::spawn(async { panic!("relay task failed on purpose") });
        let _ = task.await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    });
    eprintln!("still running");
    std::process::exit(0);
}
