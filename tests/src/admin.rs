//! regedge's admin API from a test: JSON requests over the library's own client, and
//! `regedge ctl` run as a process, both inside the proxy's namespace.

use std::{net::SocketAddr, process::Output, time::Duration};

use regedge::admin::client::{Answer, Client};

use crate::{netns::NetNs, process::regedge_binary};

/// The admin API of a regedge running in `ns`.
pub struct Admin<'a> {
    pub ns: &'a NetNs,
    pub addr: SocketAddr,
    pub token: Option<String>,
}

/// What `regedge ctl` did.
#[derive(Debug)]
pub struct Ctl {
    pub status: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Ctl {
    pub fn ok(&self) -> bool {
        self.status == Some(0)
    }

    /// stdout as JSON (after `--json`).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("ctl printed no JSON ({e}): {self:?}"))
    }
}

impl Admin<'_> {
    fn client(&self, token: Option<&str>) -> Client {
        Client { addr: self.addr, token: token.map(str::to_owned), timeout: Duration::from_secs(5) }
    }

    /// GET with the configured token.
    pub fn get(&self, target: &str) -> Answer {
        self.get_with(target, self.token.as_deref())
    }

    /// GET with `token` (`None`: no Authorization header).
    pub fn get_with(&self, target: &str, token: Option<&str>) -> Answer {
        let client = self.client(token);
        self.ns.run(|| client.get(target)).unwrap_or_else(|e| panic!("GET {target}: {e}"))
    }

    /// POST with `token`.
    pub fn post_with(&self, target: &str, token: Option<&str>) -> Answer {
        let client = self.client(token);
        self.ns.run(|| client.post(target)).unwrap_or_else(|e| panic!("POST {target}: {e}"))
    }

    /// `regedge ctl --admin <addr> [--token <token>] <args>` in the namespace.
    pub fn ctl(&self, args: &[&str]) -> Ctl {
        let binary = regedge_binary().to_str().expect("utf-8 path").to_owned();
        let mut cmd = self.ns.command(&binary);
        cmd.args(["ctl", "--admin", &self.addr.to_string()]);
        if let Some(token) = &self.token {
            cmd.args(["--token", token]);
        }
        let Output { status, stdout, stderr } = cmd.args(args).output().expect("run regedge ctl");
        Ctl {
            status: status.code(),
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        }
    }

    /// `GET /backends` as `(name, bindings, state)` in the API's order.
    pub fn backends(&self) -> Vec<(String, u64, String)> {
        let answer = self.get("/backends");
        assert_eq!(answer.status, 200, "{:?}", answer.body);
        answer
            .body
            .as_array()
            .expect("an array of backends")
            .iter()
            .map(|b| {
                (
                    b["name"].as_str().unwrap_or_default().to_owned(),
                    b["bindings"].as_u64().unwrap_or_default(),
                    b["state"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }

    /// Bindings on the backend `name` according to `GET /backends`.
    pub fn bindings_on(&self, name: &str) -> u64 {
        self.backends().into_iter().filter(|(n, _, _)| n == name).map(|(_, count, _)| count).sum()
    }
}
