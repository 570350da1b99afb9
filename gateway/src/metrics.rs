//! Prometheus metrics, served by the admin plane.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub upstream_duration: HistogramVec,
    pub auth_failures: IntCounterVec,
    pub policy_decisions: IntCounterVec,
    pub reloads: IntCounterVec,
    pub config_generation: IntGaugeVec,
    pub api_keys_loaded: IntGauge,
    pub policies_loaded: IntGauge,
}

impl Metrics {
    /// Builds and registers every metric. Fails only on a programming error (duplicate names).
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "lap_requests_total",
                "Agent requests by tool, decision and status",
            ),
            &["tool", "decision", "status"],
        )?;
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "lap_request_duration_seconds",
                "Time from request start to the last response byte",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["tool", "decision"],
        )?;
        let upstream_duration = HistogramVec::new(
            HistogramOpts::new(
                "lap_upstream_duration_seconds",
                "Time from forwarding to the end of the upstream response",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["tool"],
        )?;
        let auth_failures = IntCounterVec::new(
            Opts::new(
                "lap_auth_failures_total",
                "Refused agent credentials by code",
            ),
            &["code"],
        )?;
        let policy_decisions = IntCounterVec::new(
            Opts::new(
                "lap_policy_decisions_total",
                "Cedar decisions by tool and outcome",
            ),
            &["tool", "outcome"],
        )?;
        let reloads = IntCounterVec::new(
            Opts::new(
                "lap_reload_total",
                "Reloads of hot-reloaded files by result",
            ),
            &["file", "result"],
        )?;
        let config_generation = IntGaugeVec::new(
            Opts::new(
                "lap_config_generation",
                "Number of successful loads of each hot-reloaded file",
            ),
            &["file"],
        )?;
        let api_keys_loaded = IntGauge::new("lap_api_keys_loaded", "API keys in force")?;
        let policies_loaded = IntGauge::new("lap_policies_loaded", "Cedar policies in force")?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(request_duration.clone()))?;
        registry.register(Box::new(upstream_duration.clone()))?;
        registry.register(Box::new(auth_failures.clone()))?;
        registry.register(Box::new(policy_decisions.clone()))?;
        registry.register(Box::new(reloads.clone()))?;
        registry.register(Box::new(config_generation.clone()))?;
        registry.register(Box::new(api_keys_loaded.clone()))?;
        registry.register(Box::new(policies_loaded.clone()))?;
        Ok(Self {
            registry,
            requests,
            request_duration,
            upstream_duration,
            auth_failures,
            policy_decisions,
            reloads,
            config_generation,
            api_keys_loaded,
            policies_loaded,
        })
    }

    /// Prometheus text exposition format.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8192);
        // Encoding into a Vec cannot fail for well-formed metrics.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}
