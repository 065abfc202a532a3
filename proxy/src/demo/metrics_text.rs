//! The proxy's /metrics, fetched over plain HTTP/1.1 and read by sample name and labels.

use std::{
    io::{self, Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use crate::metrics::names;

/// A sample: name, labels, value.
type Sample = (String, Vec<(String, String)>, f64);

/// One scrape: every sample with its labels.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    samples: Vec<Sample>,
}

impl Metrics {
    /// Reads the Prometheus/OpenMetrics text format (labels without escaped quotes or
    /// commas in their values, as regedge's are).
    pub fn parse(text: &str) -> Self {
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                let value: f64 = value.trim().parse().ok()?;
                let (name, labels) = match series.split_once('{') {
                    Some((name, rest)) => (name, parse_labels(rest.strip_suffix('}')?)?),
                    None => (series, Vec::new()),
                };
                Some((name.to_owned(), labels, value))
            })
            .collect();
        Self { samples }
    }

    /// The sample of `name` with label `label` = `value` (other labels ignored), or 0.
    pub fn get(&self, name: &str, label: &str, value: &str) -> f64 {
        self.samples
            .iter()
            .find(|(n, labels, _)| n == name && labels.iter().any(|(k, v)| k == label && v == value))
            .map_or(0.0, |(_, _, v)| *v)
    }

    /// Whether there is a sample of `name` with label `label` = `value`.
    pub fn has(&self, name: &str, label: &str, value: &str) -> bool {
        self.samples.iter().any(|(n, labels, _)| n == name && labels.iter().any(|(k, v)| k == label && v == value))
    }

    /// The sum of every sample of `name`.
    pub fn sum(&self, name: &str) -> f64 {
        self.samples.iter().filter(|(n, _, _)| n == name).map(|(_, _, v)| v).sum()
    }

    /// Counter `name` (given without `_total`, as in [`names`]) with `label` = `value`.
    pub fn counter(&self, name: &str, label: &str, value: &str) -> u64 {
        self.get(&format!("{name}_total"), label, value) as u64
    }

    /// The sum of counter `name` (given without `_total`) over its labels.
    pub fn counter_sum(&self, name: &str) -> u64 {
        self.sum(&format!("{name}_total")) as u64
    }

    /// Whether the backend is up, when the proxy reports it.
    pub fn backend_up(&self, backend: &str) -> Option<bool> {
        self.has(names::BACKEND_UP, "backend", backend).then(|| self.get(names::BACKEND_UP, "backend", backend) > 0.0)
    }
}

fn parse_labels(text: &str) -> Option<Vec<(String, String)>> {
    if text.is_empty() {
        return Some(Vec::new());
    }
    text.split(',')
        .map(|pair| {
            let (k, v) = pair.split_once('=')?;
            Some((k.trim().to_owned(), v.trim().strip_prefix('"')?.strip_suffix('"')?.to_owned()))
        })
        .collect()
}

/// GET /metrics from `addr`.
pub fn scrape(addr: SocketAddr) -> io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    if !response.starts_with("HTTP/1.1 200") {
        return Err(io::Error::other(format!("unexpected answer: {}", response.lines().next().unwrap_or(""))));
    }
    Ok(response.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_samples_by_label() {
        let m = Metrics::parse(
            "# TYPE regedge_backend_up gauge\nregedge_backend_up{backend=\"sip-a\"} 1\n\
             regedge_backend_up{backend=\"sip-b\"} 0\nregedge_registrations_total{protocol=\"sip\",outcome=\"absorbed\"} 7\n\
             regedge_registrations_total{protocol=\"sip\",outcome=\"forwarded\"} 3\n# EOF\n",
        );
        assert_eq!(m.backend_up("sip-a"), Some(true));
        assert_eq!(m.backend_up("sip-b"), Some(false));
        assert_eq!(m.backend_up("sip-c"), None);
        assert_eq!(m.counter(names::REGISTRATIONS, "outcome", "absorbed"), 7);
        assert_eq!(m.counter_sum(names::REGISTRATIONS), 10);
    }
}
