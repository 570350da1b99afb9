//! The gateway's Prometheus metrics, read the way a scraper reads them.
//!
//! Metrics are part of the product's contract (operators alert on them), so tests assert on
//! samples by name and labels, parsed from the admin plane's `/metrics` text, rather than on
//! the raw text. A sample is selected by the labels a test names; other labels are ignored, so
//! adding a label to a metric does not break tests that do not care about it.

use crate::{wait_for, wait_until, Gateway};
use std::time::Duration;

/// Reads one sample from Prometheus text: `name{labels…} value`. Every given label must be
/// present with exactly that value (other labels are ignored); the first matching sample wins.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| parse_sample(l))
        .filter(|(n, _, _)| *n == name)
        .find(|(_, ls, _)| {
            labels
                .iter()
                .all(|(k, v)| ls.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|(_, _, v)| v)
}

/// The sum of every sample of `name` that has the given labels (other labels ignored): e.g.
/// all `lap_requests_total` with `decision="deny"`, whatever the tool and status.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| parse_sample(l))
        .filter(|(n, ls, _)| {
            *n == name
                && labels
                    .iter()
                    .all(|(k, v)| ls.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|(_, _, v)| v)
        .sum()
}

/// Label pairs of one sample.
type Labels = Vec<(String, String)>;

/// `name{a="x",b="y"} 1.5` → (name, labels, value).
fn parse_sample(line: &str) -> Option<(&str, Labels, f64)> {
    let line = line.trim();
    let (series, value) = line.rsplit_once(' ')?;
    let value: f64 = value.parse().ok()?;
    let Some((name, rest)) = series.split_once('{') else {
        return Some((series, Vec::new(), value));
    };
    let body = rest.strip_suffix('}')?;
    let mut labels = Vec::new();
    let mut chars = body.chars().peekable();
    loop {
        while chars.peek() == Some(&',') || chars.peek() == Some(&' ') {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        if chars.next() != Some('"') {
            return None;
        }
        let mut val = String::new();
        loop {
            match chars.next()? {
                '\\' => match chars.next()? {
                    'n' => val.push('\n'),
                    c => val.push(c),
                },
                '"' => break,
                c => val.push(c),
            }
        }
        labels.push((key, val));
    }
    Some((name, labels, value))
}

impl Gateway {
    /// Admin `/metrics` (Prometheus text); panics unless it answers 200.
    pub async fn metrics(&self) -> String {
        let r = self.admin_get("/metrics").send().await;
        assert_eq!(r.status, 200, "GET /metrics: {}", r.text());
        r.text()
    }

    /// The first `/metrics` text (polled for up to 5 s) that satisfies `settled`; panics with
    /// the last one, saying `what` was awaited, if none does. The gateway counts a request in
    /// its logging phase, after the response is sent: a test that reads counters right after
    /// its last response waits for them here.
    pub async fn settled_metrics(&self, what: &str, settled: impl Fn(&str) -> bool) -> String {
        let found = wait_for(Duration::from_secs(5), || async {
            Some(self.metrics().await).filter(|m| settled(m))
        });
        match found.await {
            Some(m) => m,
            None => panic!("metrics: {what}, not within 5 s:\n{}", self.metrics().await),
        }
    }

    /// One sample of the current metrics; see [`metric_value`].
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        metric_value(&self.metrics().await, name, labels)
    }

    /// Waits (up to 5 s) until the sample `name{labels}` equals `value` (the gateway updates
    /// some metrics in the background, e.g. after a reload); `true` if it did.
    pub async fn wait_for_metric(&self, name: &str, labels: &[(&str, &str)], value: f64) -> bool {
        wait_until(Duration::from_secs(5), || async {
            self.metric(name, labels).await == Some(value)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_parsing() {
        let text = "# HELP x\nlap_x_total{tool=\"echo\",xtool=\"a\"} 3\nlap_x_total{tool=\"a\\\"b\"} 4\nlap_y 2.5\nlap_x_total_sum 9\n";
        assert_eq!(
            metric_value(text, "lap_x_total", &[("tool", "echo")]),
            Some(3.0)
        );
        assert_eq!(
            metric_value(text, "lap_x_total", &[("tool", "a\"b")]),
            Some(4.0)
        );
        assert_eq!(metric_value(text, "lap_x_total", &[("tool", "a")]), None);
        assert_eq!(metric_value(text, "lap_y", &[]), Some(2.5));
        assert_eq!(metric_value(text, "lap_x", &[]), None);
        assert_eq!(metric_sum(text, "lap_x_total", &[]), 7.0);
        assert_eq!(metric_sum(text, "lap_x_total", &[("xtool", "a")]), 3.0);
        assert_eq!(metric_sum(text, "lap_nothing", &[]), 0.0);
    }

    #[test]
    fn samples_split_into_name_labels_and_value() {
        let (name, labels, value) =
            parse_sample(r#"lap_r{file="keys",msg="a\nb", x="1"} 1e3"#).unwrap();
        assert_eq!((name, value), ("lap_r", 1000.0));
        assert_eq!(
            labels,
            [("file", "keys"), ("msg", "a\nb"), ("x", "1")]
                .map(|(k, v)| (k.to_string(), v.to_string()))
        );
        assert_eq!(parse_sample("lap_up 1"), Some(("lap_up", Vec::new(), 1.0)));
        assert_eq!(parse_sample("lap_up{a=1} 1"), None, "unquoted label value");
        assert_eq!(parse_sample("lap_up notanumber"), None);
    }
}
