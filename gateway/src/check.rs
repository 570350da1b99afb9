//! `lap-gateway check-config`: validate everything the gateway would load, report every problem.

use crate::config::{self, CliOverrides, ProcessEnv};
use crate::state;
use crate::tools::Tool;
use std::path::Path;
use std::process::ExitCode;

pub fn check(path: Option<&Path>, cli: &CliOverrides) -> ExitCode {
    let config = match config::load(path, &ProcessEnv, cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut errors = Vec::new();
    let mut notes = Vec::new();

    match lap_keys::load(&config.keys) {
        Ok(ks) => notes.push(format!(
            "signing key {:?} from {}{}",
            ks.active_kid(),
            ks.source().as_str(),
            if ks.is_ephemeral() {
                " (EPHEMERAL: development only)"
            } else {
                ""
            }
        )),
        Err(e) => errors.push(format!("signing key: {e}")),
    }
    for (name, t) in &config.tools {
        match Tool::prepare(t, &ProcessEnv) {
            Ok(tool) => notes.push(format!(
                "tool {name:?} → {}://{}:{}{}{}",
                if tool.tls { "https" } else { "http" },
                tool.host,
                tool.port,
                tool.base_path,
                if tool.credential.is_some() {
                    " (credential injected)"
                } else {
                    ""
                }
            )),
            Err(e) => errors.push(e.to_string()),
        }
    }
    match state::load_keys(&config.api_keys) {
        Ok(store) => notes.push(format!("{} API key(s)", store.len())),
        Err(e) => errors.push(format!("API keys: {e}")),
    }
    match state::load_policy(&config) {
        Ok(engine) => {
            if config.policy_file.is_none() {
                notes.push("no policy file: every call will be denied".into());
            }
            notes.push(format!(
                "{} polic{} (digest {})",
                engine.policy_count(),
                if engine.policy_count() == 1 {
                    "y"
                } else {
                    "ies"
                },
                &engine.digest_hex()[..16]
            ));
        }
        Err(e) => errors.push(format!("policy: {e}")),
    }

    if errors.is_empty() {
        println!(
            "ok: {}",
            config
                .source
                .as_deref()
                .map_or("<defaults>".into(), |p| p.display().to_string())
        );
        for n in notes {
            println!("  {n}");
        }
        ExitCode::SUCCESS
    } else {
        for e in &errors {
            eprintln!("error: {e}");
        }
        eprintln!("{} error(s)", errors.len());
        ExitCode::FAILURE
    }
}
