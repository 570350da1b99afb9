//! JSON-RPC 2.0 as MCP uses it: what one HTTP POST body holds, and the error objects the
//! gateway answers with.
//!
//! The body is parsed strictly first (`lap_policy::parse_json_args`: duplicate keys, depth,
//! syntax), so the message the policy sees is the one the upstream reads. A body is exactly
//! one of: a request (`method` and `id`), a notification (`method`, no `id`), a response
//! (`result` or `error`, an `id`, no `method`: a client answering a server's request), or a
//! batch (an array). Batches are refused: MCP removed them in 2025-06-18, and a batch
//! forwarded whole would be decided once for several calls.

use serde::Serialize;
use serde_json::{Map, Value};
use std::fmt;

/// A JSON-RPC id: a string or an integer (MCP forbids `null` ids on requests).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(untagged)]
pub enum RpcId {
    Number(i64),
    Text(String),
}

impl RpcId {
    /// The id of a body that is not a valid message but names one (errors echo it).
    pub fn in_body(body: &Value) -> Option<Self> {
        body.get("id").and_then(RpcId::from_value)
    }

    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::String(s) => Some(RpcId::Text(s.clone())),
            Value::Number(n) => n.as_i64().map(RpcId::Number),
            _ => None,
        }
    }

    /// Whether `v` is this id.
    pub fn matches(&self, v: &Value) -> bool {
        RpcId::from_value(v).as_ref() == Some(self)
    }
}

impl fmt::Display for RpcId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RpcId::Number(n) => write!(f, "{n}"),
            RpcId::Text(s) => write!(f, "{s:?}"),
        }
    }
}

/// One POST body.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Request {
        id: RpcId,
        method: String,
        params: Map<String, Value>,
    },
    Notification {
        method: String,
    },
    /// A client's answer to a request the server sent it (sampling, elicitation, roots).
    Response {
        id: RpcId,
    },
}

/// Why a body is not one JSON-RPC message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("JSON-RPC batches are not accepted; send one message per request")]
    Batch,
    #[error("not a JSON-RPC 2.0 message: {0}")]
    Invalid(&'static str),
    #[error("method names starting with \"mcp:\" are reserved by the gateway")]
    Reserved,
}

impl Message {
    /// Classifies a parsed body.
    pub fn parse(body: &Value) -> Result<Self, MessageError> {
        let obj = match body {
            Value::Array(_) => return Err(MessageError::Batch),
            Value::Object(o) => o,
            _ => return Err(MessageError::Invalid("the body must be a JSON object")),
        };
        if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
            return Err(MessageError::Invalid("\"jsonrpc\" must be \"2.0\""));
        }
        let id = match obj.get("id") {
            None => None,
            Some(v) => Some(RpcId::from_value(v).ok_or(MessageError::Invalid(
                "\"id\" must be a string or an integer",
            ))?),
        };
        match (obj.get("method"), id) {
            // `mcp:*` names the gateway's own actions (`mcp:stream` for a legacy GET, …): a
            // message may not choose one.
            (Some(Value::String(method)), _) if method.starts_with("mcp:") => {
                Err(MessageError::Reserved)
            }
            (Some(Value::String(method)), id) => {
                let params = match obj.get("params") {
                    None => Map::new(),
                    Some(Value::Object(p)) => p.clone(),
                    Some(_) => return Err(MessageError::Invalid("\"params\" must be an object")),
                };
                Ok(match id {
                    Some(id) => Message::Request {
                        id,
                        method: method.clone(),
                        params,
                    },
                    None => Message::Notification {
                        method: method.clone(),
                    },
                })
            }
            (Some(_), _) => Err(MessageError::Invalid("\"method\" must be a string")),
            (None, Some(id)) if obj.contains_key("result") ^ obj.contains_key("error") => {
                Ok(Message::Response { id })
            }
            (None, _) => Err(MessageError::Invalid(
                "neither a request, a notification nor a response",
            )),
        }
    }
}

/// JSON-RPC error codes the gateway answers with.
pub mod code {
    /// The body is not JSON.
    pub const PARSE_ERROR: i64 = -32700;
    /// The body is JSON but not one acceptable message (also: batches).
    pub const INVALID_REQUEST: i64 = -32600;
    /// The params of a known method are unusable.
    pub const INVALID_PARAMS: i64 = -32602;
    /// MCP `HeaderMismatch`: transport headers disagree with the body, or are missing.
    pub const HEADER_MISMATCH: i64 = -32020;
    /// MCP `UnsupportedProtocolVersionError` (`data.supported`, `data.requested`).
    pub const UNSUPPORTED_VERSION: i64 = -32022;
    /// Refused by the gateway (authentication, policy, limits, evidence): `data.code` is the
    /// gateway's stable code. From the range JSON-RPC leaves to implementations.
    pub const REFUSED: i64 = -32010;
}

/// A JSON-RPC error response.
#[derive(Debug, Serialize)]
pub struct ErrorResponse<'a> {
    pub jsonrpc: &'static str,
    /// The request's id; `null` when the request was refused before its id was known.
    pub id: Option<&'a RpcId>,
    pub error: ErrorObject<'a>,
}

#[derive(Debug, Serialize)]
pub struct ErrorObject<'a> {
    pub code: i64,
    pub message: &'a str,
    pub data: Value,
}

impl<'a> ErrorResponse<'a> {
    pub fn new(id: Option<&'a RpcId>, code: i64, message: &'a str, data: Value) -> Self {
        Self {
            jsonrpc: "2.0",
            id,
            error: ErrorObject {
                code,
                message,
                data,
            },
        }
    }

    pub fn to_vec(&self) -> Vec<u8> {
        // Serialising values the gateway built cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn one_message_per_body() {
        let req = Message::parse(
            &json!({"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"add"}}),
        )
        .unwrap();
        match req {
            Message::Request { id, method, params } => {
                assert_eq!((id, method.as_str()), (RpcId::Number(7), "tools/call"));
                assert_eq!(params["name"], "add");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            Message::parse(&json!({"jsonrpc":"2.0","method":"notifications/initialized"})).unwrap(),
            Message::Notification {
                method: "notifications/initialized".into()
            }
        );
        assert_eq!(
            Message::parse(&json!({"jsonrpc":"2.0","id":"s-1","result":{}})).unwrap(),
            Message::Response {
                id: RpcId::Text("s-1".into())
            }
        );
    }

    #[test]
    fn batches_and_malformed_messages_are_refused() {
        assert_eq!(
            Message::parse(&json!([{"jsonrpc":"2.0","id":1,"method":"ping"}])),
            Err(MessageError::Batch)
        );
        for bad in [
            json!("x"),
            json!({"id":1,"method":"ping"}),
            json!({"jsonrpc":"1.0","id":1,"method":"ping"}),
            json!({"jsonrpc":"2.0","id":null,"method":"ping"}),
            json!({"jsonrpc":"2.0","id":1.5,"method":"ping"}),
            json!({"jsonrpc":"2.0","id":1,"method":7}),
            json!({"jsonrpc":"2.0","id":1,"method":"ping","params":[1]}),
            json!({"jsonrpc":"2.0","id":1}),
            json!({"jsonrpc":"2.0","id":1,"result":{},"error":{}}),
            json!({"jsonrpc":"2.0","result":{}}),
        ] {
            assert!(
                matches!(Message::parse(&bad), Err(MessageError::Invalid(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_gateways_own_action_names_are_reserved() {
        for m in ["mcp:stream", "mcp:end", "mcp:other", "mcp:call"] {
            assert_eq!(
                Message::parse(&json!({"jsonrpc":"2.0","id":1,"method":m})),
                Err(MessageError::Reserved),
                "{m}"
            );
        }
    }

    #[test]
    fn error_responses_echo_the_id() {
        let id = RpcId::Text("a".into());
        let body = ErrorResponse::new(Some(&id), code::REFUSED, "no", json!({"code":"X"})).to_vec();
        assert_eq!(
            body,
            br#"{"jsonrpc":"2.0","id":"a","error":{"code":-32010,"message":"no","data":{"code":"X"}}}"#
        );
        let body = ErrorResponse::new(None, code::PARSE_ERROR, "bad", Value::Null).to_vec();
        assert!(body.starts_with(br#"{"jsonrpc":"2.0","id":null,"#));
        assert!(id.matches(&json!("a")) && !id.matches(&json!(1)));
    }
}
