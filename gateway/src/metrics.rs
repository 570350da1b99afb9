//! Prometheus metrics, served by the admin plane.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Metric handles of one tool for the common case (an allowed call answered 200), so the hot
/// path skips the label look-up.
pub struct ToolMetrics {
    pub allowed_ok: prometheus::IntCounter,
    pub allowed_duration: Histogram,
    pub upstream_duration: Histogram,
    pub policy_allowed: prometheus::IntCounter,
}

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
    pub receipts: IntCounterVec,
    pub signer_failures: IntCounterVec,
    pub log_batch_entries: Histogram,
    pub log_append_seconds: Histogram,
    pub log_size: IntGauge,
    pub checkpoint_size: IntGauge,
    /// Refusals without a verified identity, by what evidence they got.
    pub unauthenticated_refusals: IntCounterVec,
    /// Requests and connections refused for their client address, by reason.
    pub admission_rejections: IntCounterVec,
    /// Client addresses the per-address admission tracks (rate state and open connections).
    pub admission_addresses: IntGaugeVec,
    pub state_op_seconds: HistogramVec,
    pub state_errors: IntCounterVec,
    pub limit_refusals: IntCounterVec,
    /// Admin-plane requests refused by authentication or role, by code.
    pub admin_refusals: IntCounterVec,
    pub admin_tokens_loaded: IntGauge,
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
        let receipts = IntCounterVec::new(
            Opts::new(
                "lap_receipts_total",
                "Receipts by kind and result (ok or an error code)",
            ),
            &["kind", "result"],
        )?;
        let signer_failures = IntCounterVec::new(
            Opts::new(
                "lap_signer_failures_total",
                "Refused signatures by signer mode and code",
            ),
            &["mode", "code"],
        )?;
        let log_batch_entries = Histogram::with_opts(
            HistogramOpts::new(
                "lap_log_batch_entries",
                "Receipts appended per group commit",
            )
            .buckets(vec![
                1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0,
            ]),
        )?;
        let log_append_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "lap_log_append_seconds",
                "Write + fdatasync time of a group commit",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )?;
        let log_size = IntGauge::new("lap_log_size", "Entries in the receipt log")?;
        let checkpoint_size = IntGauge::new(
            "lap_log_checkpoint_size",
            "Tree size of the latest signed checkpoint",
        )?;
        let unauthenticated_refusals = IntCounterVec::new(
            Opts::new(
                "lap_unauthenticated_refusals_total",
                "Refusals without a verified identity by evidence: receipted (own denial \
                 receipt), aggregated (counted in an aggregate receipt while the queue of \
                 unauthenticated receipts was full) or rate_limited (429, counted)",
            ),
            &["outcome"],
        )?;
        let admission_rejections = IntCounterVec::new(
            Opts::new(
                "lap_admission_rejections_total",
                "Requests and connections refused for their client address by reason \
                 (rate_limited, connection_cap, header_timeout)",
            ),
            &["reason"],
        )?;
        let admission_addresses = IntGaugeVec::new(
            Opts::new(
                "lap_admission_addresses",
                "Client addresses tracked: rate (refusal allowances), tallied (refusals \
                 counted for the next aggregate receipts), connections (with open connections)",
            ),
            &["table"],
        )?;
        registry.register(Box::new(unauthenticated_refusals.clone()))?;
        registry.register(Box::new(admission_rejections.clone()))?;
        registry.register(Box::new(admission_addresses.clone()))?;
        let state_op_seconds = HistogramVec::new(
            HistogramOpts::new(
                "lap_state_op_duration_seconds",
                "Time of state-store operations (rate limits, budgets, sessions, nonces, counters)",
            )
            .buckets(vec![
                0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                0.25, 1.0,
            ]),
            &["backend", "op"],
        )?;
        let state_errors = IntCounterVec::new(
            Opts::new(
                "lap_state_errors_total",
                "Failed state-store operations by backend, operation and code",
            ),
            &["backend", "op", "code"],
        )?;
        let limit_refusals = IntCounterVec::new(
            Opts::new(
                "lap_limit_refusals_total",
                "Calls refused by a rate limit, budget, session or replay check, by code",
            ),
            &["code"],
        )?;
        let admin_refusals = IntCounterVec::new(
            Opts::new(
                "lap_admin_refusals_total",
                "Admin-plane requests refused by authentication or role, by code",
            ),
            &["code"],
        )?;
        let admin_tokens_loaded =
            IntGauge::new("lap_admin_tokens_loaded", "Admin tokens in force")?;
        registry.register(Box::new(admin_refusals.clone()))?;
        registry.register(Box::new(admin_tokens_loaded.clone()))?;
        registry.register(Box::new(state_op_seconds.clone()))?;
        registry.register(Box::new(state_errors.clone()))?;
        registry.register(Box::new(limit_refusals.clone()))?;
        registry.register(Box::new(receipts.clone()))?;
        registry.register(Box::new(signer_failures.clone()))?;
        registry.register(Box::new(log_batch_entries.clone()))?;
        registry.register(Box::new(log_append_seconds.clone()))?;
        registry.register(Box::new(log_size.clone()))?;
        registry.register(Box::new(checkpoint_size.clone()))?;
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
            receipts,
            signer_failures,
            log_batch_entries,
            log_append_seconds,
            log_size,
            checkpoint_size,
            unauthenticated_refusals,
            admission_rejections,
            admission_addresses,
            state_op_seconds,
            state_errors,
            limit_refusals,
            admin_refusals,
            admin_tokens_loaded,
        })
    }

    /// Pre-resolved handles for a tool's most frequent label combinations.
    /// Registers collectors defined elsewhere (the TLS layer's, the JWT issuers').
    pub fn register(
        &self,
        collectors: Vec<Box<dyn prometheus::core::Collector>>,
    ) -> Result<(), prometheus::Error> {
        collectors
            .into_iter()
            .try_for_each(|c| self.registry.register(c))
    }

    pub fn for_tool(&self, tool: &str) -> ToolMetrics {
        ToolMetrics {
            allowed_ok: self.requests.with_label_values(&[tool, "allow", "200"]),
            allowed_duration: self.request_duration.with_label_values(&[tool, "allow"]),
            upstream_duration: self.upstream_duration.with_label_values(&[tool]),
            policy_allowed: self.policy_decisions.with_label_values(&[tool, "ALLOWED"]),
        }
    }

    /// The state layer's hook: every store operation's latency, and its failures by code.
    pub fn state_observer(self: &std::sync::Arc<Self>) -> std::sync::Arc<dyn lap_state::Observer> {
        std::sync::Arc::new(StateObserver(self.clone()))
    }

    /// Prometheus text exposition format.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8192);
        // Encoding into a Vec cannot fail for well-formed metrics.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

/// Feeds `lap_state_op_duration_seconds` and `lap_state_errors_total`.
struct StateObserver(std::sync::Arc<Metrics>);

impl lap_state::Observer for StateObserver {
    fn observe(
        &self,
        backend: &'static str,
        op: &'static str,
        elapsed: std::time::Duration,
        error: Option<&'static str>,
    ) {
        self.0
            .state_op_seconds
            .with_label_values(&[backend, op])
            .observe(elapsed.as_secs_f64());
        if let Some(code) = error {
            self.0
                .state_errors
                .with_label_values(&[backend, op, code])
                .inc();
        }
    }
}
