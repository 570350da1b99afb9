//! MCP (Model Context Protocol) requests as Cedar requests, and policy-filtered discovery.
//!
//! The gateway exposes MCP servers at `/mcp/{server}`. Every JSON-RPC request an agent sends
//! there is decided by the same engine as REST calls — same policy files, same reload, same
//! fail-closed rules, same memo discipline — so one policy set governs both kinds of access and
//! a `forbid` on an agent or group holds for both.
//!
//! The Cedar model (declared in `mcp.cedarschema`, the MCP part of [`crate::DEFAULT_SCHEMA`]):
//!
//! * **principal** `Agent::"<agent id>"` in its `Group`s, as for REST;
//! * **action**: each method of [`MCP_METHODS`] is its own action, in one of
//!   `Action::"mcp:call"`, `"mcp:discover"`, `"mcp:session"`; any other method is
//!   `Action::"mcp:other"` with its name in `context.method`. So extension methods pass only
//!   when a policy permits them explicitly, and no method name can select another action (a
//!   JSON-RPC method called `mcp:call`, `mcp:other` or `GET` is `mcp:other`);
//! * **resource** `McpServer::"<server>"`, or, for a method that names something,
//!   `McpTool::"<server>/<tool>"`, `McpPrompt::"<server>/<prompt>"` or
//!   `McpResource::"<server>/<uri>"`, each a child of its server so that
//!   `resource in McpServer::"<server>"` covers it. These are built per request: tool names
//!   come from upstreams at run time;
//! * **context** `McpCall`: `server`, `method`, `generation`, `protocol_version`, `auth` (how
//!   the principal authenticated, as for REST: [`AuthContext`]), and `name`, `uri`, `args` when
//!   the request has them.
//!
//! Invariants (each tested):
//! * a method's kind of target is fixed ([`McpMethod::target`], [`McpTargetKind::Server`] for
//!   unknown methods); a request whose target is of another kind is refused, never evaluated;
//! * server names are non-empty and contain no `/`, so a `"<server>/<name>"` id has one reading;
//! * anything that cannot be put to Cedar, and any evaluation error, denies
//!   ([`Outcome::EvaluationError`](crate::Outcome::EvaluationError));
//! * discovery ([`PolicyEngine::could_permit_mcp`]) never lists what the principal could not
//!   be permitted with any arguments, as far as Cedar's partial evaluation can tell; errors
//!   hide (the rule is written at that function).

use crate::auth::{self, AuthKey};
use crate::{json_to_cedar, AuthContext, Decision, PolicyEngine, PolicyError};
use cedar_policy::{
    Context, Decision as CedarDecision, Entities, Entity, EntityId, EntityTypeName, EntityUid,
    Request, RestrictedExpression, Schema,
};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// The action of every method that is not in [`MCP_METHODS`].
pub const MCP_OTHER: &str = "mcp:other";

/// The action group a known method belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum McpActionGroup {
    /// `Action::"mcp:call"`: methods that use a tool, prompt or resource.
    Call,
    /// `Action::"mcp:discover"`: methods that list what a server offers.
    Discover,
    /// `Action::"mcp:session"`: session set-up, liveness and streams.
    Session,
}

impl McpActionGroup {
    /// The group's Cedar action id.
    pub fn action(self) -> &'static str {
        match self {
            McpActionGroup::Call => "mcp:call",
            McpActionGroup::Discover => "mcp:discover",
            McpActionGroup::Session => "mcp:session",
        }
    }
}

/// What kind of entity a method's request is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum McpTargetKind {
    /// `McpServer::"<server>"`.
    Server,
    /// `McpTool::"<server>/<tool>"`.
    Tool,
    /// `McpPrompt::"<server>/<prompt>"`.
    Prompt,
    /// `McpResource::"<server>/<uri>"`.
    Resource,
}

impl fmt::Display for McpTargetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            McpTargetKind::Server => "server",
            McpTargetKind::Tool => "tool",
            McpTargetKind::Prompt => "prompt",
            McpTargetKind::Resource => "resource",
        })
    }
}

/// A known MCP method: its name is its Cedar action id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct McpMethod {
    /// The JSON-RPC method (or, for `mcp:stream` and `mcp:end`, the gateway's name for an HTTP
    /// request of the legacy generation that carries none).
    pub name: &'static str,
    pub group: McpActionGroup,
    /// The kind of target its requests must carry.
    pub target: McpTargetKind,
}

const fn m(name: &'static str, group: McpActionGroup, target: McpTargetKind) -> McpMethod {
    McpMethod {
        name,
        group,
        target,
    }
}

/// The methods the schema knows, each its own action. Any other method is [`MCP_OTHER`].
pub const MCP_METHODS: [McpMethod; 17] = {
    use McpActionGroup::{Call, Discover, Session};
    use McpTargetKind::{Prompt, Resource, Server, Tool};
    [
        m("tools/call", Call, Tool),
        m("prompts/get", Call, Prompt),
        m("resources/read", Call, Resource),
        m("resources/subscribe", Call, Resource),
        m("resources/unsubscribe", Call, Resource),
        m("completion/complete", Call, Server),
        m("tools/list", Discover, Server),
        m("prompts/list", Discover, Server),
        m("resources/list", Discover, Server),
        m("resources/templates/list", Discover, Server),
        m("server/discover", Discover, Server),
        m("initialize", Session, Server),
        m("ping", Session, Server),
        m("logging/setLevel", Session, Server),
        m("subscriptions/listen", Session, Server),
        m("mcp:stream", Session, Server),
        m("mcp:end", Session, Server),
    ]
};

/// The known method called `name` (exact, case-sensitive match), if any.
pub fn mcp_method(name: &str) -> Option<&'static McpMethod> {
    MCP_METHODS.iter().find(|m| m.name == name)
}

/// The Cedar action id that decides `method`: the method itself when known, else [`MCP_OTHER`].
pub fn mcp_action(method: &str) -> &'static str {
    mcp_method(method).map_or(MCP_OTHER, |m| m.name)
}

/// The kind of target a request for `method` must carry ([`McpTargetKind::Server`] when unknown).
pub fn mcp_target_kind(method: &str) -> McpTargetKind {
    mcp_method(method).map_or(McpTargetKind::Server, |m| m.target)
}

/// What an MCP request is about; its kind must be [`mcp_target_kind`] of the method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum McpTarget<'a> {
    Server,
    /// `tools/call`: the tool name (`params.name`).
    Tool(&'a str),
    /// `prompts/get`: the prompt name (`params.name`).
    Prompt(&'a str),
    /// `resources/read|subscribe|unsubscribe`: the resource URI (`params.uri`).
    Resource(&'a str),
}

impl<'a> McpTarget<'a> {
    pub fn kind(&self) -> McpTargetKind {
        match self {
            McpTarget::Server => McpTargetKind::Server,
            McpTarget::Tool(_) => McpTargetKind::Tool,
            McpTarget::Prompt(_) => McpTargetKind::Prompt,
            McpTarget::Resource(_) => McpTargetKind::Resource,
        }
    }

    /// The tool or prompt name, or the resource URI.
    fn name(&self) -> Option<&'a str> {
        match *self {
            McpTarget::Server => None,
            McpTarget::Tool(n) | McpTarget::Prompt(n) | McpTarget::Resource(n) => Some(n),
        }
    }
}

/// Which generation of the MCP protocol a request uses (`context.generation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum McpGeneration {
    /// `"legacy"`: the initialize/session protocol (versions 2025-03-26 to 2025-11-25).
    Legacy,
    /// `"modern"`: the stateless protocol (2026-07-28 and later).
    Modern,
}

impl McpGeneration {
    pub fn as_str(self) -> &'static str {
        match self {
            McpGeneration::Legacy => "legacy",
            McpGeneration::Modern => "modern",
        }
    }
}

/// An MCP request without its arguments: what discovery asks about
/// ([`PolicyEngine::could_permit_mcp`]), and the part of an [`McpRequest`] that is not arguments.
#[derive(Debug, Clone, Copy)]
pub struct McpCandidate<'a> {
    pub agent_id: &'a str,
    pub groups: &'a [String],
    /// The server's name (`/mcp/{server}`): non-empty, without `/`.
    pub server: &'a str,
    /// The JSON-RPC method as sent (`context.method`).
    pub method: &'a str,
    pub target: McpTarget<'a>,
    pub generation: McpGeneration,
    pub protocol_version: &'a str,
    /// How the principal authenticated (`context.auth`).
    pub auth: AuthContext<'a>,
}

impl McpCandidate<'_> {
    /// Whether Cedar can be asked about this: a usable server name and a target of the kind the
    /// method takes. [`PolicyEngine::decide_mcp`] denies (and discovery hides) otherwise.
    pub fn check(&self) -> Result<(), McpRequestError> {
        if self.server.is_empty() || self.server.contains('/') {
            return Err(McpRequestError::InvalidServer(self.server.to_string()));
        }
        let expected = mcp_target_kind(self.method);
        if self.target.kind() != expected {
            return Err(McpRequestError::TargetMismatch {
                method: self.method.to_string(),
                expected,
                got: self.target.kind(),
            });
        }
        Ok(())
    }
}

/// One MCP request, in gateway terms.
#[derive(Debug, Clone)]
pub struct McpRequest<'a> {
    pub agent_id: &'a str,
    pub groups: &'a [String],
    /// The server's name (`/mcp/{server}`): non-empty, without `/`.
    pub server: &'a str,
    /// The JSON-RPC method as sent (`context.method`); its action is [`mcp_action`].
    pub method: &'a str,
    pub target: McpTarget<'a>,
    pub generation: McpGeneration,
    pub protocol_version: &'a str,
    /// How the principal authenticated (`context.auth`).
    pub auth: AuthContext<'a>,
    /// `params.arguments` of `tools/call` / `prompts/get`, parsed with
    /// [`parse_json_args`](crate::parse_json_args); must be a JSON object (the gateway leaves
    /// anything else out, as for REST bodies).
    pub args: Option<&'a serde_json::Value>,
    /// A collision-resistant digest of the arguments (e.g. SHA-256 of their bytes). Required
    /// for decisions on `args` to be cached; `None` disables caching.
    pub args_digest: Option<[u8; 32]>,
}

impl<'a> McpRequest<'a> {
    /// The request without its arguments.
    pub fn candidate(&self) -> McpCandidate<'a> {
        McpCandidate {
            agent_id: self.agent_id,
            groups: self.groups,
            server: self.server,
            method: self.method,
            target: self.target,
            generation: self.generation,
            protocol_version: self.protocol_version,
            auth: self.auth,
        }
    }

    /// [`McpCandidate::check`], and arguments (when given) must be a JSON object.
    pub fn check(&self) -> Result<(), McpRequestError> {
        self.candidate().check()?;
        match self.args {
            Some(v) if !v.is_object() => Err(McpRequestError::ArgsNotObject),
            _ => Ok(()),
        }
    }
}

/// Why an engine refuses every MCP request ([`PolicyEngine::mcp_unavailable`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum McpUnavailable {
    /// The operator's schema declares none of the MCP actions.
    #[error("the policy schema declares no MCP actions (see docs/policy.md)")]
    NotDeclared,
    /// With the default schema: the policies validate against its REST part only (typically an
    /// unscoped policy reading REST-only context such as `context.path`), so they were loaded
    /// for REST alone. Carries the validation errors against the full default schema.
    #[error(
        "the policies validate against the REST part of the default schema only, \
         so MCP requests are refused; against the full schema:\n{0}"
    )]
    RestOnlyPolicies(String),
}

impl McpUnavailable {
    /// Stable code for logs, metrics and error bodies.
    pub fn code(&self) -> &'static str {
        match self {
            McpUnavailable::NotDeclared => "MCP_NOT_DECLARED",
            McpUnavailable::RestOnlyPolicies(_) => "MCP_POLICIES_REST_ONLY",
        }
    }
}

/// Why an MCP request could not be put to Cedar. [`PolicyEngine::decide_mcp`] then denies with
/// [`Outcome::EvaluationError`](crate::Outcome::EvaluationError), this message in `errors`.
#[derive(Debug, thiserror::Error)]
pub enum McpRequestError {
    #[error("MCP is unavailable in the policy in force ({})", .0.code())]
    Unavailable(#[source] McpUnavailable),
    #[error("MCP server name {0:?} is empty or contains '/'")]
    InvalidServer(String),
    #[error("MCP method {method:?} takes a {expected} target, not a {got}")]
    TargetMismatch {
        method: String,
        expected: McpTargetKind,
        got: McpTargetKind,
    },
    #[error("MCP arguments must be a JSON object")]
    ArgsNotObject,
    // Cedar's errors are large; boxed so that results stay small.
    #[error("MCP entities: {0}")]
    Entities(#[source] Box<cedar_policy::entities_errors::EntitiesError>),
    #[error("MCP context: {0}")]
    Context(#[source] Box<cedar_policy::ContextCreationError>),
    #[error("MCP {0}")]
    Auth(#[source] crate::AuthRecordError),
    #[error("MCP request: {0}")]
    Request(#[source] Box<cedar_policy::RequestValidationError>),
}

impl McpRequestError {
    /// Stable code for logs, metrics and error bodies.
    pub fn code(&self) -> &'static str {
        match self {
            McpRequestError::Unavailable(u) => u.code(),
            McpRequestError::InvalidServer(_) => "MCP_INVALID_SERVER",
            McpRequestError::TargetMismatch { .. } => "MCP_TARGET_MISMATCH",
            McpRequestError::ArgsNotObject => "MCP_ARGS_NOT_OBJECT",
            McpRequestError::Entities(_)
            | McpRequestError::Context(_)
            | McpRequestError::Auth(_)
            | McpRequestError::Request(_) => "MCP_REQUEST_INVALID",
        }
    }
}

/// The Cedar names an engine uses for MCP requests, once the schema is known to accept them.
pub(crate) struct McpModel {
    /// Every known method → its action.
    actions: HashMap<&'static str, EntityUid>,
    /// `Action::"mcp:other"`.
    other: EntityUid,
    server_type: EntityTypeName,
    tool_type: EntityTypeName,
    prompt_type: EntityTypeName,
    resource_type: EntityTypeName,
}

impl McpModel {
    /// The MCP model of `schema`: `Ok(None)` when it declares no MCP action at all (a REST-only
    /// schema); an error when it declares some but not all, or declares them so that the
    /// engine's requests would not conform (checked with one sample request per action, context
    /// and entity types included: what the validator assumed is what requests carry).
    pub(crate) fn from_schema(
        schema: &Schema,
        agent_type: &EntityTypeName,
    ) -> Result<Option<Self>, PolicyError> {
        let name =
            |s: &str| EntityTypeName::from_str(s).map_err(|e| PolicyError::Invalid(e.to_string()));
        let action_type = name("Action")?;
        let declared: HashSet<&EntityUid> = schema.actions().collect();
        let uid =
            |id: &str| EntityUid::from_type_name_and_id(action_type.clone(), EntityId::new(id));
        let names = MCP_METHODS.iter().map(|m| m.name).chain([MCP_OTHER]);
        let (present, missing): (Vec<&str>, Vec<&str>) =
            names.partition(|n| declared.contains(&uid(n)));
        let groups = [
            McpActionGroup::Call,
            McpActionGroup::Discover,
            McpActionGroup::Session,
        ];
        if present.is_empty() && !groups.iter().any(|g| declared.contains(&uid(g.action()))) {
            return Ok(None);
        }
        if !missing.is_empty() {
            return Err(PolicyError::Schema(format!(
                "the schema declares some MCP actions but not {} (declare all of them, as the \
                 default schema does, or none)",
                missing.join(", ")
            )));
        }
        let model = McpModel {
            actions: MCP_METHODS.iter().map(|m| (m.name, uid(m.name))).collect(),
            other: uid(MCP_OTHER),
            server_type: name("McpServer")?,
            tool_type: name("McpTool")?,
            prompt_type: name("McpPrompt")?,
            resource_type: name("McpResource")?,
        };
        // `context.auth` is sent only when a policy reads it, so a schema may declare it or not;
        // when it does, every kind of record must conform.
        let scopes = ["s".to_string()];
        let auths = [
            AuthContext::ApiKey { key_id: Some("k") },
            AuthContext::ApiKey { key_id: None },
            AuthContext::Jwt {
                issuer: "https://issuer.example",
                subject: "s",
                scopes: &scopes,
            },
            AuthContext::Mtls {
                spiffe_id: Some("spiffe://example.org/a"),
            },
            AuthContext::Mtls { spiffe_id: None },
        ];
        for method in MCP_METHODS.iter().map(|m| m.name).chain(["x/other"]) {
            let target = match mcp_target_kind(method) {
                McpTargetKind::Server => McpTarget::Server,
                McpTargetKind::Tool => McpTarget::Tool("t"),
                McpTargetKind::Prompt => McpTarget::Prompt("p"),
                McpTargetKind::Resource => McpTarget::Resource("file:///r"),
            };
            let conforms = |auth: AuthContext<'_>, with_auth: bool| {
                let sample = McpCandidate {
                    agent_id: "a",
                    groups: &[],
                    server: "s",
                    method,
                    target,
                    generation: McpGeneration::Legacy,
                    protocol_version: "2025-06-18",
                    auth,
                };
                // Cedar's message only: the caller says which sample it was.
                let context = model
                    .context(&sample, None, with_auth)
                    .map_err(|e| e.to_string())?;
                let principal =
                    EntityUid::from_type_name_and_id(agent_type.clone(), EntityId::new("a"));
                let (resource, _) = model.resource(&sample);
                Request::new(
                    principal,
                    model.action(method).clone(),
                    resource,
                    context,
                    Some(schema),
                )
                .map(|_| ())
                .map_err(|e| e.to_string())
            };
            if let Err(with_auth) = auths.iter().try_for_each(|a| conforms(*a, true)) {
                // A schema without `context.auth` (policies cannot then read it), or both
                // errors: which one applies depends on whether the schema meant to declare it.
                conforms(auths[1], false).map_err(|without| {
                    PolicyError::Schema(format!(
                        "action \"{}\" does not accept the gateway's MCP requests: \
                         with context.auth: {with_auth}; without it: {without}",
                        mcp_action(method)
                    ))
                })?;
            }
        }
        Ok(Some(model))
    }

    /// The action deciding `method` (known methods are their own action, others `mcp:other`).
    fn action(&self, method: &str) -> &EntityUid {
        self.actions.get(method).unwrap_or(&self.other)
    }

    /// The resource uid and, for named targets, the resource's entity (parent: the server).
    fn resource(&self, c: &McpCandidate<'_>) -> (EntityUid, Option<Entity>) {
        let server = self.server_uid(c.server);
        let ty = match c.target {
            McpTarget::Server => return (server, None),
            McpTarget::Tool(_) => &self.tool_type,
            McpTarget::Prompt(_) => &self.prompt_type,
            McpTarget::Resource(_) => &self.resource_type,
        };
        let id = format!("{}/{}", c.server, c.target.name().unwrap_or_default());
        let uid = EntityUid::from_type_name_and_id(ty.clone(), EntityId::new(id));
        let entity = Entity::new_no_attrs(uid.clone(), HashSet::from([server]));
        (uid, Some(entity))
    }

    fn server_uid(&self, server: &str) -> EntityUid {
        EntityUid::from_type_name_and_id(self.server_type.clone(), EntityId::new(server))
    }

    /// The `McpCall` context; `args` is the arguments' Cedar value, or an unknown for discovery;
    /// `auth` is included when `with_auth` (some policy reads it).
    fn context(
        &self,
        c: &McpCandidate<'_>,
        args: Option<RestrictedExpression>,
        with_auth: bool,
    ) -> Result<Context, McpRequestError> {
        let s = |v: &str| RestrictedExpression::new_string(v.to_string());
        let mut pairs = vec![
            ("server".to_string(), s(c.server)),
            ("method".to_string(), s(c.method)),
            ("generation".to_string(), s(c.generation.as_str())),
            ("protocol_version".to_string(), s(c.protocol_version)),
        ];
        match c.target {
            McpTarget::Server => {}
            McpTarget::Tool(n) | McpTarget::Prompt(n) => pairs.push(("name".to_string(), s(n))),
            McpTarget::Resource(u) => pairs.push(("uri".to_string(), s(u))),
        }
        if let Some(a) = args {
            pairs.push(("args".to_string(), a));
        }
        if with_auth {
            let record = c.auth.to_cedar().map_err(McpRequestError::Auth)?;
            pairs.push(("auth".to_string(), record));
        }
        Context::from_pairs(pairs).map_err(|e| McpRequestError::Context(Box::new(e)))
    }
}

/// Inputs of an MCP decision or listing, owned (the stored half of a memo entry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct McpKey {
    agent_id: String,
    groups: Vec<String>,
    server: String,
    method: String,
    target: (McpTargetKind, Option<String>),
    generation: McpGeneration,
    protocol_version: String,
    args: Option<[u8; 32]>,
    /// `None` when no policy reads `context.auth` (it is then not in the context either).
    auth: Option<AuthKey>,
}

impl McpKey {
    fn new(c: &McpCandidate<'_>, args: Option<[u8; 32]>, auth: Option<AuthContext<'_>>) -> Self {
        McpKey {
            agent_id: c.agent_id.to_string(),
            groups: c.groups.to_vec(),
            server: c.server.to_string(),
            method: c.method.to_string(),
            target: (c.target.kind(), c.target.name().map(str::to_string)),
            generation: c.generation,
            protocol_version: c.protocol_version.to_string(),
            args,
            auth: auth.as_ref().map(AuthKey::new),
        }
    }

    /// Every input compared: a different target, argument digest, group list, `context.auth`
    /// … never matches.
    fn is(
        &self,
        c: &McpCandidate<'_>,
        args: Option<[u8; 32]>,
        auth: Option<AuthContext<'_>>,
    ) -> bool {
        self.agent_id == c.agent_id
            && self.groups == c.groups
            && self.server == c.server
            && self.method == c.method
            && self.target.0 == c.target.kind()
            && self.target.1.as_deref() == c.target.name()
            && self.generation == c.generation
            && self.protocol_version == c.protocol_version
            && self.args == args
            && auth::same(&self.auth, &auth)
    }
}

fn hash_inputs<'a>(
    c: McpCandidate<'a>,
    args: Option<[u8; 32]>,
    auth: Option<AuthContext<'a>>,
) -> impl std::hash::Hash + 'a {
    (
        (c.agent_id, c.groups, c.server, c.method),
        (c.target, c.generation, c.protocol_version, args, auth),
    )
}

impl PolicyEngine {
    /// Why this engine refuses every MCP request, if it does (then `decide_mcp` denies with
    /// that reason and `could_permit_mcp` lists nothing). Worth logging at load.
    pub fn mcp_unavailable(&self) -> Option<&McpUnavailable> {
        self.mcp.as_ref().err()
    }

    /// Decides one MCP request. Never panics; anything that cannot be put to Cedar, and any
    /// evaluation error, is a fail-closed denial ([`Outcome::EvaluationError`](crate::Outcome)).
    /// Memoised like [`PolicyEngine::decide`].
    pub fn decide_mcp(&self, req: McpRequest<'_>) -> Arc<Decision> {
        // Refusals are answered before the memo: they depend on inputs (the kind of `args`)
        // that the memo key leaves out when no policy reads the arguments.
        if let Err(e) = self.mcp_model().and_then(|_| req.check()) {
            return Arc::new(Decision::refused(&e));
        }
        let c = req.candidate();
        let args = match (self.uses_args, req.args, req.args_digest) {
            (false, _, _) | (true, None, _) => Some(None),
            (true, Some(_), Some(d)) => Some(Some(d)),
            // Arguments a policy reads, without a digest to identify them: not memoised.
            (true, Some(_), None) => None,
        };
        let auth = self.uses_auth.then_some(c.auth);
        let hash = args.map(|a| (a, self.mcp_decisions.hash(hash_inputs(c, a, auth))));
        if let Some((a, h)) = hash {
            if let Some(hit) = self.mcp_decisions.get(h, |k| k.is(&c, a, auth)) {
                return hit;
            }
        }
        let decision = Arc::new(match self.try_decide_mcp(&req) {
            Ok(d) => d,
            Err(e) => Decision::refused(&e),
        });
        if let Some((a, h)) = hash {
            self.mcp_decisions
                .insert(h, McpKey::new(&c, a, auth), decision.clone());
        }
        decision
    }

    /// Discovery: could `c` be permitted with **some** arguments (none included)? For filtering
    /// `tools/list`, `prompts/list`, `resources/list` results: list an item iff this holds for
    /// the request that would use it (`tools/call` with [`McpTarget::Tool`], …).
    ///
    /// The rule (sound: `true` only when Cedar cannot rule the call out):
    /// 1. an invalid candidate or an engine without MCP: `false`;
    /// 2. the exact decision **without arguments** is Allow: `true`;
    /// 3. otherwise, when some policy reads `context.args`, Cedar partially evaluates the
    ///    request with `context.args` present but **unknown**. `true` iff no policy errored and
    ///    the partial decision is not a definite Deny — i.e. no `forbid` is satisfied whatever
    ///    the arguments, and some `permit` is satisfied or still depends on the arguments;
    /// 4. anything else: `false`.
    ///
    /// So an unconditional `forbid` (or one whose condition does not involve the arguments and
    /// holds) hides; a `forbid … when { context.args… }` does not; a `permit` that errors
    /// without arguments being involved never makes anything listable (any error hides, as it
    /// denies every call). Conditions on arguments are taken to be satisfiable both ways: a
    /// contradiction written on arguments (`x < 0 && x > 0`) still lists, and the call itself is
    /// then denied by [`PolicyEngine::decide_mcp`] — listing never grants anything.
    ///
    /// Memoised per engine, bounded like decisions.
    pub fn could_permit_mcp(&self, c: McpCandidate<'_>) -> bool {
        if self.mcp_model().and_then(|_| c.check()).is_err() {
            return false;
        }
        let auth = self.uses_auth.then_some(c.auth);
        let hash = self.mcp_listings.hash(hash_inputs(c, None, auth));
        if let Some(hit) = self.mcp_listings.get(hash, |k| k.is(&c, None, auth)) {
            return hit;
        }
        let listed = self.try_could_permit_mcp(&c);
        self.mcp_listings
            .insert(hash, McpKey::new(&c, None, auth), listed);
        listed
    }

    fn mcp_model(&self) -> Result<&McpModel, McpRequestError> {
        self.mcp
            .as_ref()
            .map_err(|u| McpRequestError::Unavailable(u.clone()))
    }

    fn try_could_permit_mcp(&self, c: &McpCandidate<'_>) -> bool {
        let without_args = self.decide_mcp(McpRequest {
            agent_id: c.agent_id,
            groups: c.groups,
            server: c.server,
            method: c.method,
            target: c.target,
            generation: c.generation,
            protocol_version: c.protocol_version,
            auth: c.auth,
            args: None,
            args_digest: None,
        });
        if without_args.outcome.is_allow() {
            return true;
        }
        // No policy reads the arguments: the decision without them is the decision for all.
        if !self.uses_args {
            return false;
        }
        let Ok(request) = self.mcp_request(c, Some(RestrictedExpression::new_unknown("args")))
        else {
            return false;
        };
        let Ok(entities) = self.mcp_entities(c) else {
            return false;
        };
        let partial = self
            .authorizer
            .is_authorized_partial(&request, &self.policies, &entities);
        if partial.definitely_errored().next().is_some() {
            return false;
        }
        !matches!(partial.decision(), Some(CedarDecision::Deny))
    }

    fn try_decide_mcp(&self, req: &McpRequest<'_>) -> Result<Decision, McpRequestError> {
        let c = req.candidate();
        // An object always converts (its keys are unique); were one ever not to, it is refused
        // rather than left out, which would let a `forbid` on the arguments pass it by.
        let args = match req.args {
            Some(v) if self.uses_args => {
                Some(json_to_cedar(v).ok_or(McpRequestError::ArgsNotObject)?)
            }
            _ => None,
        };
        let request = self.mcp_request(&c, args)?;
        let entities = self.mcp_entities(&c)?;
        let response = self
            .authorizer
            .is_authorized(&request, &self.policies, &entities);
        Ok(self.decision_of(&response))
    }

    fn mcp_request(
        &self,
        c: &McpCandidate<'_>,
        args: Option<RestrictedExpression>,
    ) -> Result<Request, McpRequestError> {
        let model = self.mcp_model()?;
        let principal =
            EntityUid::from_type_name_and_id(self.agent_type.clone(), EntityId::new(c.agent_id));
        let (resource, _) = model.resource(c);
        let context = model.context(c, args, self.uses_auth)?;
        Request::new(
            principal,
            model.action(c.method).clone(),
            resource,
            context,
            None,
        )
        .map_err(|e| McpRequestError::Request(Box::new(e)))
    }

    /// The principal's entity store plus the server and, for named targets, the target.
    fn mcp_entities(&self, c: &McpCandidate<'_>) -> Result<Entities, McpRequestError> {
        let model = self.mcp_model()?;
        let principal =
            EntityUid::from_type_name_and_id(self.agent_type.clone(), EntityId::new(c.agent_id));
        let base = self
            .principal_entities(&principal, c.groups)
            .map_err(McpRequestError::Entities)?;
        let server = Entity::new_no_attrs(model.server_uid(c.server), HashSet::new());
        let (_, target) = model.resource(c);
        Entities::clone(&base)
            .add_entities(std::iter::once(server).chain(target), None)
            .map_err(|e| McpRequestError::Entities(Box::new(e)))
    }
}

#[cfg(test)]
mod tests;
