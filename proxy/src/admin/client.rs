//! `regedge ctl`: a small HTTP/1.0 client of the admin API (one request per connection,
//! no chunked bodies) and the tables it prints.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use serde_json::Value;

/// Why a request to the admin API got no JSON answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot connect to the admin API at {addr}: {source} (is regedge running with [admin] listen = \"{addr}\"?)"
    )]
    Connect { addr: SocketAddr, source: std::io::Error },
    #[error("talking to the admin API at {addr}: {source}")]
    Io { addr: SocketAddr, source: std::io::Error },
    #[error("the admin API at {addr} answered something that is not HTTP with a JSON body ({what})")]
    BadResponse { addr: SocketAddr, what: &'static str },
}

/// An answer: the HTTP status and the JSON body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

impl Answer {
    /// The API's error message, for a status of 400 or more.
    pub fn error(&self) -> Option<String> {
        (self.status >= 400).then(|| {
            self.body.get("error").and_then(Value::as_str).map_or_else(|| self.body.to_string(), str::to_owned)
        })
    }
}

/// The admin API at `addr`, with the bearer token when one is set.
pub struct Client {
    pub addr: SocketAddr,
    pub token: Option<String>,
    pub timeout: Duration,
}

impl Client {
    pub fn get(&self, target: &str) -> Result<Answer, ClientError> {
        self.request("GET", target)
    }

    pub fn post(&self, target: &str) -> Result<Answer, ClientError> {
        self.request("POST", target)
    }

    fn request(&self, method: &str, target: &str) -> Result<Answer, ClientError> {
        let addr = self.addr;
        let io = |source| ClientError::Io { addr, source };
        let mut stream =
            TcpStream::connect_timeout(&addr, self.timeout).map_err(|source| ClientError::Connect { addr, source })?;
        stream.set_read_timeout(Some(self.timeout)).map_err(io)?;
        stream.set_write_timeout(Some(self.timeout)).map_err(io)?;
        let mut head = format!("{method} {target} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: 0\r\n");
        if let Some(token) = &self.token {
            head.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).map_err(io)?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).map_err(io)?;
        parse_response(&response).map_err(|what| ClientError::BadResponse { addr, what })
    }
}

/// Status line, headers, JSON body.
fn parse_response(response: &[u8]) -> Result<Answer, &'static str> {
    let split = response.windows(4).position(|w| w == b"\r\n\r\n").ok_or("no end of headers")?;
    let head = std::str::from_utf8(&response[..split]).map_err(|_| "headers are not UTF-8")?;
    let status = head
        .lines()
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or("no status line")?;
    let body = serde_json::from_slice(&response[split + 4..]).map_err(|_| "the body is not JSON")?;
    Ok(Answer { status, body })
}

/// A table: a header row, then rows, columns padded to their widest cell.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(cell, width)| format!("{cell:<width$}")).collect();
        padded.join("  ").trim_end().to_owned() + "\n"
    };
    let mut out = line(header.iter().map(|h| (*h).to_owned()).collect());
    for row in rows {
        out.push_str(&line(row.clone()));
    }
    out
}

fn text(value: &Value, key: &str) -> String {
    match value.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "-".to_owned(),
        Some(other) => other.to_string(),
    }
}

/// `GET /bindings` as a table, with the page and the total.
pub fn render_bindings(page: &Value) -> String {
    let bindings = page.get("bindings").and_then(Value::as_array).cloned().unwrap_or_default();
    let rows: Vec<Vec<String>> = bindings
        .iter()
        .map(|b| {
            let flow = b.get("flow").cloned().unwrap_or(Value::Null);
            vec![
                text(b, "device"),
                text(b, "aor"),
                format!("{}:{}", text(&flow, "transport"), text(&flow, "peer")),
                text(b, "group"),
                text(b, "backend"),
                format!("{}s", text(b, "phone_expires_in")),
                format!("{}s", text(b, "backend_expires_in")),
                text(b, "kernel"),
            ]
        })
        .collect();
    let mut out = table(&["DEVICE", "AOR", "FLOW", "GROUP", "BACKEND", "PHONE", "UPSTREAM", "KERNEL"], &rows);
    let offset = page.get("offset").and_then(Value::as_u64).unwrap_or(0);
    let total = page.get("total").and_then(Value::as_u64).unwrap_or(0);
    let shown = bindings.len() as u64;
    let range = if shown == 0 { "none".to_owned() } else { format!("{}-{}", offset + 1, offset + shown) };
    out.push_str(&format!("{range} of {total} bindings\n"));
    out
}

/// `GET /backends` as a table.
pub fn render_backends(backends: &Value) -> String {
    let rows: Vec<Vec<String>> = backends
        .as_array()
        .into_iter()
        .flatten()
        .map(|b| {
            let retired = b.get("retired").and_then(Value::as_bool) == Some(true);
            // A drained backend that is also down shows both.
            let drained = b.get("drained").and_then(Value::as_bool) == Some(true);
            let state = text(b, "state");
            let state = if drained && state != "draining" { format!("{state}, drained") } else { state };
            vec![
                text(b, "name") + if retired { " (retired)" } else { "" },
                text(b, "address"),
                format!("{}/{}", text(b, "protocol"), text(b, "transport")),
                state,
                text(b, "health"),
                text(b, "bindings"),
                format!("{}/s", text(b, "max_register_rate")),
            ]
        })
        .collect();
    table(&["NAME", "ADDRESS", "PROTOCOL", "STATE", "HEALTH", "BINDINGS", "RATE"], &rows)
}

/// `GET /groups` as a table.
pub fn render_groups(groups: &Value) -> String {
    let rows: Vec<Vec<String>> = groups
        .as_array()
        .into_iter()
        .flatten()
        .map(|g| {
            let members: Vec<String> = g
                .get("backends")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|b| b.as_str().unwrap_or_default().to_owned())
                .collect();
            vec![text(g, "name"), text(g, "protocol"), members.join(" > "), text(g, "active")]
        })
        .collect();
    table(&["NAME", "PROTOCOL", "BACKENDS (PRIORITY)", "ACTIVE"], &rows)
}

/// Percent-encodes what is not unreserved in a path segment or query value.
pub fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b':' | b'@' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_are_read_with_their_status_and_json() {
        let answer =
            parse_response(b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\n\r\n{\"error\": \"nope\"}")
                .unwrap();
        assert_eq!(answer.status, 404);
        assert_eq!(answer.error().as_deref(), Some("nope"));
        assert_eq!(parse_response(b"HTTP/1.1 200 OK\r\n\r\nnot json").unwrap_err(), "the body is not JSON");
        assert_eq!(parse_response(b"garbage").unwrap_err(), "no end of headers");
    }

    #[test]
    fn tables_pad_columns_and_count_the_page() {
        let page = serde_json::json!({
            "total": 3, "offset": 1, "limit": 1,
            "bindings": [{
                "device": "dev:SEP002414000001", "aor": "sip:1@example.net",
                "flow": {"transport": "udp", "peer": "10.0.0.2:5060", "local": "10.0.0.1:5060"},
                "group": "default", "backend": "cm1", "phone_expires_in": 25, "backend_expires_in": 580,
                "kernel": "answering"
            }]
        });
        let out = render_bindings(&page);
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].starts_with("DEVICE               AOR"), "{out}");
        assert!(lines[1].contains("udp:10.0.0.2:5060") && lines[1].ends_with("answering"), "{out}");
        assert_eq!(lines[2], "2-2 of 3 bindings");
    }

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(encode("aor:sip:1001@example.net"), "aor:sip:1001@example.net");
        assert_eq!(encode("a b/c?d"), "a%20b%2Fc%3Fd");
    }
}
