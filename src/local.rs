//! Subcommands that talk to the tern running on this host through its HTTP endpoint, found the
//! way the server finds it (the same config files, environment and flags): `tern health` for a
//! container's HEALTHCHECK and `tern drain` for a Kubernetes preStop hook. The image has no shell
//! or curl, so the binary does it.

use crate::config::{self, Config, DrainArgs, HealthArgs, ServeArgs};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

/// `tern health [URL]`: GETs URL, or `/healthz` at `http-listen` of the configuration the server
/// reads, so a container's HEALTHCHECK follows its config. Exit status 0 on a 2xx answer, 1 on
/// anything else (what Docker's HEALTHCHECK reads).
pub fn health(serve: &ServeArgs, args: &HealthArgs) -> ExitCode {
    let url = match &args.url {
        Some(url) => url.clone(),
        None => match config::load(serve)
            .map_err(|e| e.to_string())
            .and_then(|config| local_url(&config, "/healthz"))
        {
            Ok(url) => url,
            Err(reason) => return fail("health", &reason),
        },
    };
    match agent(args.timeout).get(&url).call() {
        Ok(response) if response.status().is_success() => {
            println!("{url}: {}", response.status());
            ExitCode::SUCCESS
        }
        Ok(response) => fail("health", &format!("{url}: {}", response.status())),
        Err(error) => fail("health", &format!("{url}: {error}")),
    }
}

/// `tern drain`: POSTs `/api/v1/admin/drain` with the first admin key, then waits `--wait`
/// seconds. Exit status 0 once the server drains, 1 otherwise (no admin key configured, no
/// answer, a refusal).
pub fn drain(serve: &ServeArgs, args: &DrainArgs) -> ExitCode {
    let config = match config::load(serve) {
        Ok(config) => config,
        Err(error) => return fail("drain", &error.to_string()),
    };
    let Some(key) = config.admin_api_keys.first() else {
        return fail(
            "drain",
            "no admin-api-keys configured: the admin API (and so draining through it) is off",
        );
    };
    let url = match local_url(&config, "/api/v1/admin/drain") {
        Ok(url) => url,
        Err(reason) => return fail("drain", &reason),
    };
    let answer = agent(args.timeout)
        .post(&url)
        .header("Authorization", &format!("Bearer {}", key.0))
        .send("");
    match answer {
        Ok(response) if response.status().is_success() => {
            println!("{url}: {}: draining", response.status());
        }
        Ok(response) => return fail("drain", &format!("{url}: {}", response.status())),
        Err(error) => return fail("drain", &format!("{url}: {error}")),
    }
    std::thread::sleep(Duration::from_secs(args.wait));
    ExitCode::SUCCESS
}

fn agent(timeout_secs: u64) -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(timeout_secs)))
        .http_status_as_error(false)
        .build()
        .into()
}

fn fail(command: &str, reason: &str) -> ExitCode {
    eprintln!("tern {command}: {reason}");
    ExitCode::FAILURE
}

/// `http://<http-listen><path>`, with an unspecified address (`0.0.0.0`, `::`) replaced by the
/// loopback address of its family, where a listener on it answers.
fn local_url(config: &Config, path: &str) -> Result<String, String> {
    if config.no_http {
        return Err("no-http is set: there is no HTTP endpoint".into());
    }
    if config.http_tls {
        return Err("http-tls is set: this command speaks plain HTTP only (name an http:// URL, or check the TURN port)".into());
    }
    let mut addr: SocketAddr = config.http_listen;
    if addr.ip().is_unspecified() {
        let loopback: IpAddr = match addr {
            SocketAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
        };
        addr.set_ip(loopback);
    }
    Ok(format!("http://{addr}{path}"))
}
