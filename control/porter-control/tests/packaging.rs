//! The Dockerfile and the deployment files, checked without a container engine: the
//! image builds exactly README's release command and ships those binaries, runs as a
//! non-root user, exposes the ports of the configuration it ships, and that
//! configuration (and the Agones one) passes Porter's own checks. The Kubernetes schemas
//! are checked by `scripts/check-manifests`.

use std::collections::BTreeSet;
use std::path::Path;

use porter_control::setup::Settings;
use serde::Deserialize as _;

fn read(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The Dockerfile's instructions: (INSTRUCTION, arguments), continuation lines joined,
/// comments dropped.
fn instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part.trim_end());
                current.push(' ');
            }
            None => {
                current.push_str(line);
                let (op, args) = current.split_once(' ').unwrap_or((&current, ""));
                out.push((op.to_uppercase(), args.trim().to_owned()));
                current.clear();
            }
        }
    }
    out
}

fn all<'a>(ins: &'a [(String, String)], op: &str) -> Vec<&'a str> {
    ins.iter()
        .filter(|(o, _)| o == op)
        .map(|(_, a)| a.as_str())
        .collect()
}

/// The release build command of README's deploy section.
fn readme_build_command() -> String {
    let readme = read("README.md");
    let section = readme
        .split("\n## ")
        .find(|s| s.starts_with("Deploying on Kubernetes"))
        .expect("README has a section \"Deploying on Kubernetes\"");
    let commands: Vec<&str> = section
        .lines()
        .filter(|l| l.starts_with("cargo build --release --locked"))
        .collect();
    assert_eq!(
        commands.len(),
        1,
        "one build command in the section: {commands:?}"
    );
    commands[0].to_owned()
}

#[test]
fn the_dockerfile_builds_readmes_binaries_and_runs_them_as_no_root() {
    let ins = instructions(&read("Dockerfile"));
    let froms = all(&ins, "FROM");
    let rust_version = read("Cargo.toml")
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = \""))
        .and_then(|v| v.strip_suffix('"'))
        .expect("workspace rust-version")
        .to_owned();
    assert_eq!(
        froms,
        [
            format!("rust:{rust_version}-bookworm AS build").as_str(),
            "debian:bookworm-slim"
        ],
        "multi-stage: the declared toolchain, then a slim runtime"
    );

    // The build stage runs exactly README's command.
    let command = readme_build_command();
    let runs = all(&ins, "RUN");
    assert_eq!(runs.first().copied(), Some(command.as_str()), "{runs:?}");
    let binaries: Vec<&str> = command
        .split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .filter(|w| w[0] == "--bin")
        .map(|w| w[1])
        .collect();
    assert_eq!(binaries, ["porter", "porter-smol"]);

    // Those binaries, from the release profile, are what the image ships.
    let workdir = all(&ins, "WORKDIR");
    assert_eq!(workdir, ["/src"]);
    let copies = all(&ins, "COPY");
    for bin in &binaries {
        let copy = format!("--from=build /src/target/release/{bin} /usr/local/bin/{bin}");
        assert!(copies.contains(&copy.as_str()), "{copy} in {copies:?}");
    }
    assert!(
        copies.contains(&"docs/deploy/config.yaml /etc/porter/config.yaml"),
        "{copies:?}"
    );
    assert_eq!(all(&ins, "ENTRYPOINT"), [r#"["porter"]"#]);
    assert_eq!(
        all(&ins, "CMD"),
        [r#"["--config", "/etc/porter/config.yaml"]"#]
    );

    // The last USER is neither root nor uid 0, and the user was created as a system user.
    let user = *all(&ins, "USER").last().expect("a USER instruction");
    let uid = user.split(':').next().unwrap();
    assert!(!["root", "0"].contains(&uid), "USER {user}");
    assert!(
        runs.iter()
            .any(|r| r.contains(&format!("useradd --system --uid {uid} "))),
        "the user {uid} is created: {runs:?}"
    );

    // The ports of the configuration the image ships.
    let config = porter_config::load_with_env(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/deploy/config.yaml"),
        &|_| Some("token-from-the-environment".to_owned()),
    )
    .expect("docs/deploy/config.yaml is valid");
    let exposed: BTreeSet<String> = all(&ins, "EXPOSE")
        .iter()
        .flat_map(|a| a.split_whitespace().map(str::to_owned))
        .collect();
    let wanted: BTreeSet<String> = [
        format!("{}/udp", config.udp.port),
        format!("{}/tcp", config.api.port),
    ]
    .into();
    assert_eq!(exposed, wanted);

    // The Deployment runs the image's user and names the same ports.
    let manifest = read("docs/deploy/kubernetes/porter.yaml");
    let deployment = serde_yaml::Deserializer::from_str(&manifest)
        .map(|d| serde_yaml::Value::deserialize(d).expect("manifest YAML"))
        .find(|d| d["kind"] == "Deployment")
        .expect("a Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(
        pod["securityContext"]["runAsUser"]
            .as_u64()
            .map(|u| u.to_string())
            .as_deref(),
        Some(uid)
    );
    let ports: BTreeSet<String> = pod["containers"][0]["ports"]
        .as_sequence()
        .expect("container ports")
        .iter()
        .map(|p| {
            format!(
                "{}/{}",
                p["containerPort"].as_u64().unwrap(),
                p["protocol"].as_str().unwrap().to_lowercase()
            )
        })
        .collect();
    assert_eq!(ports, wanted);
}

#[test]
fn the_shipped_configurations_pass_porters_checks() {
    for path in ["docs/deploy/config.yaml", "docs/deploy/agones/config.yaml"] {
        let full = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .join(path);
        // The token comes from the environment (a Secret), as the manifests set it.
        let env = |name: &str| (name == "PORTER_API_TOKEN").then(|| "from-a-secret".to_owned());
        let config =
            porter_config::load_with_env(&full, &env).unwrap_or_else(|e| panic!("{path}:\n{e}"));
        let settings =
            Settings::from_config_with_env(&config, env).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert!(config.reload.watch, "{path}: hot reload on");
        assert!(!settings.routes.is_empty(), "{path}: an example route");
        // Without the token, the public API refuses to start: the Secret is needed.
        let without = porter_config::load_with_env(&full, &|_| None);
        assert!(without.is_err(), "{path}: a public API needs a token");
    }
}
