//! Cedar policy decisions for the LAP gateway.
//!
//! One engine decides both ways agents reach tools: REST calls (`/tools/{tool}/…`, below) and
//! MCP JSON-RPC requests (`/mcp/{server}`, see the [`mcp`] module), from one policy set, so a
//! rule about an agent or a group holds whichever way it comes.
//!
//! Every REST tool call becomes one Cedar request:
//!
//! * **principal** `Agent::"<agent id>"`, a member of `Group::"<g>"` for each group of its key;
//! * **action** `Action::"<HTTP method>"` (`GET`, `HEAD`, `OPTIONS` are in `Action::"read"`;
//!   `POST`, `PUT`, `PATCH`, `DELETE` in `Action::"write"`);
//! * **resource** `Tool::"<tool name>"`;
//! * **context** `{path, query, body_size, args?, auth}`: the path below the tool prefix, the raw
//!   query string, the body length, for JSON bodies the parsed body as `args`, and how the
//!   principal authenticated as `auth` (see [`AuthContext`]; also in MCP requests).
//!
//! The decision is **deny by default**, and also deny whenever any policy fails to evaluate
//! (Cedar skips erroring policies, which could silently drop a `forbid`; we refuse instead).
//! Policies are validated against a schema at load time (the embedded default or the operator's).
//! The default schema has a REST part and an MCP part; a policy set that validates against the
//! REST part only (one written before MCP, say) still loads, for REST alone — MCP requests are
//! then refused, and [`PolicyEngine::mcp_unavailable`] says why.

mod args;
mod auth;
pub mod mcp;
mod memo;

pub use args::{json_to_cedar, parse_json_args, validate_json_args, ArgsError, MAX_ARGS_DEPTH};
pub use auth::{AuthContext, AuthRecordError};
pub use mcp::{
    mcp_action, mcp_method, mcp_target_kind, McpActionGroup, McpCandidate, McpGeneration,
    McpMethod, McpRequest, McpRequestError, McpTarget, McpTargetKind, McpUnavailable, MCP_METHODS,
    MCP_OTHER,
};

use auth::AuthKey;
use cedar_policy::{
    Authorizer, Context, Decision as CedarDecision, Entities, Entity, EntityId, EntityTypeName,
    EntityUid, PolicyId, PolicySet, Request, Response, RestrictedExpression, Schema,
    ValidationMode, Validator,
};
use mcp::{McpKey, McpModel};
use memo::Memo;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::{Arc, RwLock};

/// Most principals whose entity stores are kept (see `principal_entities`).
const ENTITY_CACHE_MAX: usize = 4096;

/// Cache key of a principal's entity store: agent id and groups.
type PrincipalKey = (String, Vec<String>);

/// Most decisions kept per engine and kind (REST decisions, MCP decisions, MCP listings).
const DECISION_CACHE_MAX: usize = 16384;

/// The inputs of a request, borrowed, for cache look-ups without allocating.
struct KeyRef<'r> {
    hash: u64,
    agent_id: &'r str,
    groups: &'r [String],
    method: &'r str,
    tool: &'r str,
    path: &'r str,
    query: &'r str,
    body_size: u64,
    args: Option<[u8; 32]>,
    /// `None` when no policy reads `context.auth` (it is then not in the context either).
    auth: Option<AuthContext<'r>>,
}

impl KeyRef<'_> {
    fn matches(&self, k: &DecisionKey) -> bool {
        self.agent_id == k.agent_id
            && self.groups == k.groups.as_slice()
            && self.method == k.method
            && self.tool == k.tool
            && self.path == k.path
            && self.query == k.query
            && self.body_size == k.body_size
            && self.args == k.args
            && auth::same(&k.auth, &self.auth)
    }

    fn to_owned(&self) -> DecisionKey {
        DecisionKey {
            agent_id: self.agent_id.to_string(),
            groups: self.groups.to_vec(),
            method: self.method.to_string(),
            tool: self.tool.to_string(),
            path: self.path.to_string(),
            query: self.query.to_string(),
            body_size: self.body_size,
            args: self.args,
            auth: self.auth.as_ref().map(AuthKey::new),
        }
    }
}

/// Every input of a decision.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct DecisionKey {
    agent_id: String,
    groups: Vec<String>,
    method: String,
    tool: String,
    path: String,
    query: String,
    body_size: u64,
    args: Option<[u8; 32]>,
    auth: Option<AuthKey>,
}

/// The schema used when the operator gives none: the REST part, then [`MCP_SCHEMA`]. Operators
/// who write policies on `args` extend `Args` (and `McpArgs`) in their own copy (see
/// `docs/policy.md`).
pub const DEFAULT_SCHEMA: &str = concat!(
    include_str!("default.cedarschema"),
    "\n",
    include_str!("mcp.cedarschema")
);

/// The REST part of [`DEFAULT_SCHEMA`], alone: the schema in force when the policies validate
/// against it but not against the whole default (see [`McpUnavailable::RestOnlyPolicies`]).
const REST_SCHEMA: &str = include_str!("default.cedarschema");

/// The MCP part of [`DEFAULT_SCHEMA`] (entities, `McpArgs`, `McpCall`, the MCP actions), for
/// operators who append it to a schema of their own.
pub const MCP_SCHEMA: &str = include_str!("mcp.cedarschema");

/// HTTP methods a tool call may use; anything else is refused before policy.
pub const METHODS: [&str; 7] = ["GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"];

/// Why a policy set or schema was rejected. Messages carry file positions where Cedar has them.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("schema: {0}")]
    Schema(String),
    #[error("policy syntax: {0}")]
    Syntax(String),
    #[error("policy validation against the schema failed:\n{0}")]
    Validation(String),
    #[error("{0}")]
    Invalid(String),
}

/// Why a request could not be put to Cedar. The decision is then a fail-closed
/// [`Outcome::EvaluationError`] whose `errors` carry this message.
#[derive(Debug, thiserror::Error)]
enum RequestError {
    #[error("method {0} has no Cedar action")]
    NoAction(String),
    // Cedar's errors are large; boxed so that a decision's `Result` stays small.
    #[error(transparent)]
    Entities(EntitiesError),
    #[error(transparent)]
    Auth(AuthRecordError),
    #[error(transparent)]
    Context(Box<cedar_policy::ContextCreationError>),
    #[error(transparent)]
    Request(Box<cedar_policy::RequestValidationError>),
}

/// What a request asks for, in gateway terms.
#[derive(Debug, Clone)]
pub struct DecisionRequest<'a> {
    pub agent_id: &'a str,
    pub groups: &'a [String],
    pub method: &'a str,
    pub tool: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub body_size: u64,
    /// The parsed JSON body when it is a JSON object (see [`parse_json_args`]).
    pub args: Option<&'a serde_json::Value>,
    /// A collision-resistant digest of the arguments (the gateway uses SHA-256 of the body
    /// bytes). Required for decisions on `args` to be cached; `None` disables caching.
    pub args_digest: Option<[u8; 32]>,
    /// How the principal authenticated (`context.auth`).
    pub auth: AuthContext<'a>,
}

/// Outcome of a decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Allow,
    /// No `permit` matched (deny by default).
    NoPermit,
    /// A `forbid` matched.
    Forbidden,
    /// A policy could not be evaluated; refused to fail closed.
    EvaluationError,
}

impl Outcome {
    pub fn is_allow(&self) -> bool {
        matches!(self, Outcome::Allow)
    }

    /// Stable code for error bodies and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Outcome::Allow => "ALLOWED",
            Outcome::NoPermit => "POLICY_NO_PERMIT",
            Outcome::Forbidden => "POLICY_FORBIDDEN",
            Outcome::EvaluationError => "POLICY_EVALUATION_ERROR",
        }
    }
}

/// A decision with the ids of the policies that determined it.
#[derive(Debug, Clone)]
pub struct Decision {
    pub outcome: Outcome,
    /// Policies that determined the outcome (the matching permits, or the matching forbids).
    pub policy_ids: Vec<String>,
    /// `policy_ids` joined with commas (for headers and logs).
    pub policy_list: String,
    /// Evaluation errors, as `policy id: message` (never contains request data beyond ids).
    pub errors: Vec<String>,
}

impl Decision {
    /// The fail-closed denial of a request that could not be put to Cedar.
    fn refused(why: &dyn std::error::Error) -> Self {
        Decision {
            outcome: Outcome::EvaluationError,
            policy_ids: Vec::new(),
            policy_list: String::new(),
            errors: vec![why.to_string()],
        }
    }
}

/// Cedar's entity-store error, boxed (it is large).
type EntitiesError = Box<cedar_policy::entities_errors::EntitiesError>;

/// A loaded, validated policy set plus the static entities it needs (actions and tools).
pub struct PolicyEngine {
    policies: PolicySet,
    forbid_ids: HashSet<String>,
    /// What each permit policy with a `@require("…")` annotation asks of the calls it allows.
    requires: HashMap<String, Requires>,
    base_entities: Arc<Vec<Entity>>,
    authorizer: Authorizer,
    digest_hex: String,
    agent_type: EntityTypeName,
    group_type: EntityTypeName,
    action_uids: HashMap<&'static str, EntityUid>,
    tool_type: EntityTypeName,
    entity_cache: RwLock<HashMap<PrincipalKey, Arc<Entities>>>,
    uses_args: bool,
    /// Whether any policy can read `context.auth` (see [`PolicyEngine::uses_auth`]).
    uses_auth: bool,
    /// REST decisions, memoised (see [`memo`]).
    decisions: Memo<DecisionKey, Arc<Decision>>,
    /// The MCP model, or why this engine refuses MCP requests.
    mcp: Result<McpModel, McpUnavailable>,
    /// MCP decisions, memoised.
    mcp_decisions: Memo<McpKey, Arc<Decision>>,
    /// Answers of [`PolicyEngine::could_permit_mcp`], memoised.
    mcp_listings: Memo<McpKey, bool>,
}

impl std::fmt::Debug for PolicyEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyEngine")
            .field("policies", &self.policy_count())
            .field("digest", &self.digest_hex())
            .finish()
    }
}

impl PolicyEngine {
    /// Parses the schema and policies, validates them (strict mode) and prepares the entities.
    ///
    /// `policy_src` may contain `@id("…")` annotations; they become the policy ids reported in
    /// decisions. Policies without one are named `policy0`, `policy1`, … in file order.
    ///
    /// Without `schema_src` the [`DEFAULT_SCHEMA`] applies; policies that validate only against
    /// its REST part are loaded with that part alone, and MCP requests are then refused
    /// ([`McpUnavailable::RestOnlyPolicies`]). An operator's schema that declares the MCP
    /// actions must declare all of them so that they accept the engine's MCP requests; one
    /// that declares none gives a REST-only engine ([`McpUnavailable::NotDeclared`]).
    pub fn load(
        policy_src: &str,
        schema_src: Option<&str>,
        tools: &[String],
    ) -> Result<Self, PolicyError> {
        let operator_schema = match schema_src {
            Some(text) => Some((text, parse_schema(text)?)),
            None => None,
        };

        let parsed = PolicySet::from_str(policy_src)
            .map_err(|e| PolicyError::Syntax(render(&e, policy_src)))?;
        let policies = rename_by_annotation(parsed)?;
        let uses_args = mentions(&policies, "args");
        let uses_auth = mentions(&policies, "auth");
        if policies.templates().next().is_some() {
            return Err(PolicyError::Invalid(
                "policy templates are not supported; write concrete policies".into(),
            ));
        }

        // The schema in force, and (default schema only) why MCP is off when the policies
        // validate against the REST part alone.
        let (schema_text, schema, rest_only) = match operator_schema {
            Some((text, schema)) => {
                validate(&schema, &policies, policy_src).map_err(PolicyError::Validation)?;
                (text, schema, None)
            }
            None => {
                let full = parse_schema(DEFAULT_SCHEMA)?;
                match validate(&full, &policies, policy_src) {
                    Ok(()) => (DEFAULT_SCHEMA, full, None),
                    Err(errors) => {
                        let rest = parse_schema(REST_SCHEMA)?;
                        if validate(&rest, &policies, policy_src).is_err() {
                            return Err(PolicyError::Validation(errors));
                        }
                        (REST_SCHEMA, rest, Some(errors))
                    }
                }
            }
        };

        let name =
            |s: &str| EntityTypeName::from_str(s).map_err(|e| PolicyError::Invalid(e.to_string()));
        let (agent_type, group_type, tool_type) = (name("Agent")?, name("Group")?, name("Tool")?);
        let action_type = name("Action")?;

        let actions = schema
            .action_entities()
            .map_err(|e| PolicyError::Schema(e.to_string()))?;
        let mut action_uids = HashMap::new();
        for m in METHODS {
            let uid = EntityUid::from_type_name_and_id(action_type.clone(), EntityId::new(m));
            if actions.get(&uid).is_none() {
                return Err(PolicyError::Schema(format!(
                    "the schema must declare action \"{m}\" (see the default schema)"
                )));
            }
            action_uids.insert(m, uid);
        }
        let mut base: Vec<Entity> = actions.iter().cloned().collect();
        for t in tools {
            let uid = EntityUid::from_type_name_and_id(tool_type.clone(), EntityId::new(t));
            base.push(Entity::new_no_attrs(uid, HashSet::new()));
        }

        let mcp = match (rest_only, McpModel::from_schema(&schema, &agent_type)?) {
            (Some(errors), _) => Err(McpUnavailable::RestOnlyPolicies(errors)),
            (None, Some(model)) => Ok(model),
            (None, None) => Err(McpUnavailable::NotDeclared),
        };

        let forbid_ids = policies
            .policies()
            .filter(|p| p.effect() == cedar_policy::Effect::Forbid)
            .map(|p| p.id().to_string())
            .collect();
        let requires = requirements(&policies)?;

        // Over the schema in force (for REST-only policies on the default schema: its REST part).
        let mut h = Sha256::new();
        h.update(b"lap-policy-v1\0schema\0");
        h.update(schema_text.as_bytes());
        h.update(b"\0policies\0");
        h.update(policy_src.as_bytes());

        Ok(Self {
            policies,
            forbid_ids,
            requires,
            base_entities: Arc::new(base),
            authorizer: Authorizer::new(),
            digest_hex: hex::encode(h.finalize()),
            agent_type,
            group_type,
            action_uids,
            tool_type,
            entity_cache: RwLock::new(HashMap::new()),
            uses_args,
            uses_auth,
            decisions: Memo::new(DECISION_CACHE_MAX),
            mcp,
            mcp_decisions: Memo::new(DECISION_CACHE_MAX),
            mcp_listings: Memo::new(DECISION_CACHE_MAX),
        })
    }

    /// What the permit policies that allowed a call (`policy_ids` of an allow) ask of it: the
    /// union of their `@require("…")` annotations.
    pub fn requires(&self, policy_ids: &[String]) -> Requires {
        policy_ids
            .iter()
            .filter_map(|id| self.requires.get(id))
            .fold(Requires::default(), |a, b| Requires {
                session: a.session || b.session,
                nonce: a.nonce || b.nonce,
                counter: a.counter || b.counter,
            })
    }

    /// Whether any policy can read `context.args`; when none can, the gateway skips converting
    /// the JSON body into Cedar values (it still parses it strictly). See [`mentions`].
    pub fn uses_args(&self) -> bool {
        self.uses_args
    }

    /// Whether any policy can read `context.auth` (decided like [`PolicyEngine::uses_args`]).
    /// When none can, the record is left out of the context and out of the decision-cache key,
    /// so principals that differ only in how they authenticated share cache entries; when one
    /// can, the record is in both, so they never do.
    pub fn uses_auth(&self) -> bool {
        self.uses_auth
    }

    pub fn policy_count(&self) -> usize {
        self.policies.policies().count()
    }

    /// SHA-256 over the schema and policy text in force (goes into receipts), in hex.
    pub fn digest_hex(&self) -> &str {
        &self.digest_hex
    }

    /// Decides one request. Never panics; any internal problem is a fail-closed denial.
    pub fn decide(&self, req: DecisionRequest<'_>) -> Arc<Decision> {
        // Decisions are a pure function of the request (no clock, no external data), so they
        // are memoised per engine; a reload starts with an empty cache.
        let key = self.cache_key(&req);
        if let Some(k) = &key {
            if let Some(hit) = self.decisions.get(k.hash, |stored| k.matches(stored)) {
                return hit;
            }
        }
        let decision = Arc::new(match self.try_decide(&req) {
            Ok(d) => d,
            Err(e) => Decision::refused(&e),
        });
        if let Some(k) = key {
            self.decisions
                .insert(k.hash, k.to_owned(), decision.clone());
        }
        decision
    }

    /// Everything a decision depends on (borrowed, with its hash); `None` when it cannot be
    /// cached (arguments that a policy reads, without a digest to identify them).
    fn cache_key<'r>(&self, req: &'r DecisionRequest<'r>) -> Option<KeyRef<'r>> {
        let args = match (self.uses_args, req.args, req.args_digest) {
            (false, _, _) | (true, None, _) => None,
            (true, Some(_), Some(d)) => Some(d),
            (true, Some(_), None) => return None,
        };
        let mut k = KeyRef {
            hash: 0,
            agent_id: req.agent_id,
            groups: req.groups,
            method: req.method,
            tool: req.tool,
            path: req.path,
            query: req.query,
            body_size: req.body_size,
            args,
            auth: self.uses_auth.then_some(req.auth),
        };
        k.hash = self.decisions.hash((
            (k.agent_id, k.groups, k.method, k.tool),
            (k.path, k.query, k.body_size, k.args, k.auth),
        ));
        Some(k)
    }

    /// The entity store for one principal: static entities plus the agent and its groups.
    ///
    /// Building it (Cedar computes the hierarchy's transitive closure) costs more than the
    /// decision itself, so it is cached per (agent, groups). The cache lives in the engine and
    /// is dropped with it on reload; it is cleared when it reaches its bound.
    fn principal_entities(
        &self,
        principal: &EntityUid,
        groups: &[String],
    ) -> Result<Arc<Entities>, EntitiesError> {
        let key = (principal.id().unescaped().to_string(), groups.to_vec());
        if let Some(hit) = self
            .entity_cache
            .read()
            .ok()
            .and_then(|c| c.get(&key).cloned())
        {
            return Ok(hit);
        }
        let mut entities: Vec<Entity> = Vec::with_capacity(self.base_entities.len() + 4);
        entities.extend(self.base_entities.iter().cloned());
        let mut parents = HashSet::new();
        for g in groups {
            let uid = EntityUid::from_type_name_and_id(self.group_type.clone(), EntityId::new(g));
            entities.push(Entity::new_no_attrs(uid.clone(), HashSet::new()));
            parents.insert(uid);
        }
        entities.push(Entity::new_no_attrs(principal.clone(), parents));
        let built = Arc::new(Entities::from_entities(entities, None).map_err(Box::new)?);
        if let Ok(mut cache) = self.entity_cache.write() {
            if cache.len() >= ENTITY_CACHE_MAX {
                cache.clear();
            }
            cache.insert(key, built.clone());
        }
        Ok(built)
    }

    fn try_decide(&self, req: &DecisionRequest<'_>) -> Result<Decision, RequestError> {
        let action = self
            .action_uids
            .get(req.method)
            .ok_or_else(|| RequestError::NoAction(req.method.to_string()))?
            .clone();
        let principal =
            EntityUid::from_type_name_and_id(self.agent_type.clone(), EntityId::new(req.agent_id));
        let resource =
            EntityUid::from_type_name_and_id(self.tool_type.clone(), EntityId::new(req.tool));

        let entities = self
            .principal_entities(&principal, req.groups)
            .map_err(RequestError::Entities)?;

        let body_size = i64::try_from(req.body_size).unwrap_or(i64::MAX);
        let mut ctx = vec![
            (
                "path".to_string(),
                RestrictedExpression::new_string(req.path.to_string()),
            ),
            (
                "query".to_string(),
                RestrictedExpression::new_string(req.query.to_string()),
            ),
            (
                "body_size".to_string(),
                RestrictedExpression::new_long(body_size),
            ),
        ];
        if self.uses_args {
            if let Some(args) = req.args.and_then(json_to_cedar) {
                ctx.push(("args".to_string(), args));
            }
        }
        if self.uses_auth {
            ctx.push((
                "auth".to_string(),
                req.auth.to_cedar().map_err(RequestError::Auth)?,
            ));
        }
        let context = Context::from_pairs(ctx).map_err(|e| RequestError::Context(Box::new(e)))?;
        let request = Request::new(principal, action, resource, context, None)
            .map_err(|e| RequestError::Request(Box::new(e)))?;

        let response = self
            .authorizer
            .is_authorized(&request, &self.policies, entities.as_ref());
        Ok(self.decision_of(&response))
    }

    /// Cedar's answer as a decision: any evaluation error denies (Cedar alone would skip the
    /// erroring policy, which could drop a `forbid`); a deny with a matching forbid is
    /// [`Outcome::Forbidden`], without one [`Outcome::NoPermit`].
    fn decision_of(&self, response: &Response) -> Decision {
        let errors: Vec<String> = response
            .diagnostics()
            .errors()
            .map(|e| e.to_string())
            .collect();
        let policy_ids: Vec<String> = response
            .diagnostics()
            .reason()
            .map(PolicyId::to_string)
            .collect();
        let outcome = if !errors.is_empty() {
            Outcome::EvaluationError
        } else {
            match response.decision() {
                CedarDecision::Allow => Outcome::Allow,
                CedarDecision::Deny if policy_ids.iter().any(|id| self.forbid_ids.contains(id)) => {
                    Outcome::Forbidden
                }
                CedarDecision::Deny => Outcome::NoPermit,
            }
        };
        Decision {
            outcome,
            policy_list: policy_ids.join(","),
            policy_ids,
            errors,
        }
    }
}

fn parse_schema(text: &str) -> Result<Schema, PolicyError> {
    Schema::from_cedarschema_str(text)
        .map(|(schema, _warnings)| schema)
        .map_err(|e| PolicyError::Schema(render(&e, text)))
}

/// Strict validation of `policies` against `schema`; the errors, one a line, with positions.
fn validate(schema: &Schema, policies: &PolicySet, policy_src: &str) -> Result<(), String> {
    let validation = Validator::new(schema.clone()).validate(policies, ValidationMode::Strict);
    if validation.validation_passed() {
        return Ok(());
    }
    let msgs: Vec<String> = validation
        .validation_errors()
        .map(|e| render(e, policy_src))
        .collect();
    Err(msgs.join("\n"))
}

/// Whether any policy mentions `word` (`args`, `auth`) anywhere once parsed (attribute
/// accesses, `has`, record keys, strings): whether it can read `context.<word>`. Decided on
/// Cedar's JSON form of each policy, where string escapes are decoded: the source text can name
/// `args` without those letters (`context["\u{61}rgs"]`). A policy that cannot be rendered
/// counts as reading it (the safe side). One answer for REST and MCP: `context.args` and
/// `context.auth` mean the same in both, and over-counting only costs a conversion.
fn mentions(policies: &PolicySet, word: &str) -> bool {
    fn has(v: &serde_json::Value, word: &str) -> bool {
        match v {
            serde_json::Value::String(s) => s.contains(word),
            serde_json::Value::Array(items) => items.iter().any(|i| has(i, word)),
            serde_json::Value::Object(map) => {
                map.iter().any(|(k, v)| k.contains(word) || has(v, word))
            }
            _ => false,
        }
    }
    policies
        .policies()
        .any(|p| p.to_json().map_or(true, |json| has(&json, word)))
}

/// What a permit policy asks of the calls it allows, from its `@require("…")` annotation: a
/// comma-separated list of `session`, `nonce`, `counter` (`@require("nonce, counter")`). A nonce
/// or a counter implies a session (they are kept per session). The state layer enforces them;
/// policy only names them, so that the rule and its condition are written in one place.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Requires {
    pub session: bool,
    pub nonce: bool,
    pub counter: bool,
}

/// The `@require` annotations of a policy set. Refused: one on a `forbid` (a refusal needs
/// nothing), an empty one, or an unknown word — a typo must not silently drop a requirement.
fn requirements(policies: &PolicySet) -> Result<HashMap<String, Requires>, PolicyError> {
    let mut out = HashMap::new();
    for p in policies.policies() {
        let Some(text) = p.annotation("require") else {
            continue;
        };
        let id = p.id().to_string();
        if p.effect() == cedar_policy::Effect::Forbid {
            return Err(PolicyError::Invalid(format!(
                "policy {id:?}: @require applies to permit policies only"
            )));
        }
        let mut r = Requires::default();
        for word in text.split(',').map(str::trim) {
            match word {
                "session" => r.session = true,
                "nonce" => r.nonce = true,
                "counter" => r.counter = true,
                other => {
                    return Err(PolicyError::Invalid(format!(
                        "policy {id:?}: @require({text:?}): {other:?} is not one of session, nonce, counter"
                    )))
                }
            }
        }
        r.session = r.session || r.nonce || r.counter;
        out.insert(id, r);
    }
    Ok(out)
}

/// Gives each policy the id from its `@id("…")` annotation, rejecting duplicates.
fn rename_by_annotation(parsed: PolicySet) -> Result<PolicySet, PolicyError> {
    let mut out = PolicySet::new();
    let mut seen = HashSet::new();
    for p in parsed.policies() {
        let id = match p.annotation("id") {
            Some(a) if !a.is_empty() => a.to_string(),
            Some(_) => return Err(PolicyError::Invalid("@id(\"\") is empty".into())),
            None => p.id().to_string(),
        };
        if !seen.insert(id.clone()) {
            return Err(PolicyError::Invalid(format!("duplicate policy id {id:?}")));
        }
        out.add(p.new_id(PolicyId::new(id)))
            .map_err(|e| PolicyError::Invalid(e.to_string()))?;
    }
    Ok(out)
}

/// Renders a Cedar diagnostic with `line:column` of each labelled span.
fn render(e: &dyn miette::Diagnostic, src: &str) -> String {
    let mut msg = e.to_string();
    let mut extra = Vec::new();
    if let Some(labels) = e.labels() {
        for l in labels {
            let (line, col) = line_col(src, l.offset());
            extra.push(format!("line {line}, column {col}"));
        }
    }
    if let Some(help) = e.help() {
        msg.push_str(&format!(" (help: {help})"));
    }
    if !extra.is_empty() {
        msg = format!("{} at {}", msg, extra.join(", "));
    }
    msg
}

fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let before = &src[..offset.min(src.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

#[cfg(test)]
mod tests;
