//! Property tests of the request parser: whatever a client sends, parsing never panics, and
//! every rejection carries one of the documented codes — `-32700` exactly when the frame is
//! not JSON, `-32600`/`-32002`/`-32006` otherwise — while everything accepted respects the
//! documented bounds. The fast `textMessage` path gives exactly what the general parser
//! gives, and the stored message it writes is byte for byte the general encoding.

use natter_protocol::request::{ROOM_NAME_MAX, USER_NAME_MAX, UUID_MAX};
use natter_protocol::{frame, Call, ErrorCode, Limits, Request};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

fn limits() -> Limits {
    Limits {
        max_text_bytes: 64,
        ..Limits::default()
    }
}

/// Any JSON value, small.
fn any_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        ".{0,80}".prop_map(Value::String),
        "[a-z]{0,300}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-zA-Z]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

const KEYS: [&str; 12] = [
    "userId",
    "userName",
    "roomName",
    "text",
    "uuid",
    "date",
    "lastMessageId",
    "sessionId",
    "token",
    "before",
    "limit",
    "type",
];

const METHODS: [&str; 9] = [
    "joinRoom",
    "reconnect",
    "textMessage",
    "leaveRoom",
    "typing",
    "getHistory",
    "ping",
    "nope",
    "",
];

/// A request-shaped object with known methods and keys holding values of any type.
fn request_like() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(METHODS.to_vec()),
        prop::collection::btree_map(prop::sample::select(KEYS.to_vec()), any_value(), 0..10),
        any_value(),
        prop::option::of(any_value()),
        any::<bool>(),
    )
        .prop_map(|(method, params, id, params_override, rpc_ok)| {
            let mut o = Map::new();
            o.insert("jsonrpc".into(), json!(if rpc_ok { "2.0" } else { "1.0" }));
            o.insert("method".into(), json!(method));
            let params: Map<String, Value> =
                params.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
            o.insert(
                "params".into(),
                params_override.unwrap_or(Value::Object(params)),
            );
            o.insert("id".into(), id);
            Value::Object(o)
        })
}

/// A `textMessage` whose fields are mostly right: valid ones, wrong types, bounds just
/// inside and outside, escapes, optional `date` and `id` of every kind, extra keys.
fn text_message_like() -> impl Strategy<Value = Value> {
    let name = prop_oneof![
        4 => "[a-zA-Z0-9 é\"\\\n\u{1F600}]{1,20}".prop_map(Value::String),
        1 => Just(json!("")),
        1 => "[a-z]{120,140}".prop_map(Value::String),
        1 => any_value(),
    ];
    let user_id = prop_oneof![
        3 => "[a-z0-9-]{1,12}".prop_map(Value::String),
        2 => any::<i64>().prop_map(|n| json!(n)),
        1 => any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| json!(f)),
        1 => any_value(),
    ];
    let text = prop_oneof![
        4 => ".{1,60}".prop_map(Value::String),
        1 => ".{60,70}".prop_map(Value::String),
        1 => any_value(),
    ];
    let date = prop::option::of(prop_oneof![
        Just(Value::Null),
        any::<i64>().prop_map(|n| json!(n)),
        ".{0,70}".prop_map(Value::String),
        any_value(),
    ]);
    let id = prop::option::of(prop_oneof![
        any::<u32>().prop_map(|n| json!(n)),
        ".{0,130}".prop_map(Value::String),
        any_value(),
    ]);
    let extra = prop::collection::btree_map("[a-zA-Z_]{1,8}", any_value(), 0..3);
    (
        (name.clone(), name.clone(), name),
        user_id,
        text,
        date,
        id,
        extra,
    )
        .prop_map(|((room, user, uuid), uid, text, date, id, extra)| {
            let mut p: Map<String, Value> = extra.into_iter().collect();
            p.insert("roomName".into(), room);
            p.insert("userName".into(), user);
            p.insert("uuid".into(), uuid);
            p.insert("userId".into(), uid);
            p.insert("text".into(), text);
            if let Some(d) = date {
                p.insert("date".into(), d);
            }
            let mut o = Map::new();
            o.insert("jsonrpc".into(), json!("2.0"));
            o.insert("method".into(), json!("textMessage"));
            o.insert("params".into(), Value::Object(p));
            if let Some(id) = id {
                o.insert("id".into(), id);
            }
            Value::Object(o)
        })
}

fn documented(code: i64) -> bool {
    [
        ErrorCode::Parse,
        ErrorCode::InvalidRequest,
        ErrorCode::MethodNotFound,
        ErrorCode::TooLarge,
    ]
    .iter()
    .any(|c| c.code() == code)
}

fn check_accepted(r: &Request) {
    match &r.call {
        Call::JoinRoom(j) | Call::Reconnect(j) => {
            assert!(!j.room_name.is_empty() && j.room_name.len() <= ROOM_NAME_MAX);
            assert!(!j.user_name.is_empty() && j.user_name.len() <= USER_NAME_MAX);
        }
        Call::TextMessage(t) => {
            assert!(t.uuid.len() <= UUID_MAX);
            let params = t.params();
            let text = params["text"].as_str().expect("text is a string");
            assert!(!text.is_empty() && text.len() <= limits().max_text_bytes);
            for k in params.keys() {
                assert!(
                    ["userId", "roomName", "userName", "text", "ack", "uuid", "date"]
                        .contains(&k.as_str()),
                    "undocumented param {k} stored"
                );
            }
        }
        Call::GetHistory(g) => {
            assert!(g
                .limit
                .is_none_or(|l| l >= 1 && l <= limits().max_history_page));
        }
        _ => {}
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, .. ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic_and_get_a_documented_code(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        match Request::parse(&bytes, &limits()) {
            Ok(r) => check_accepted(&r),
            Err(rej) => {
                let code = rej.error.code.code();
                prop_assert!(documented(code), "undocumented code {code}");
                let is_json = serde_json::from_slice::<Value>(&bytes).is_ok();
                prop_assert_eq!(code == ErrorCode::Parse.code(), !is_json);
            }
        }
    }

    #[test]
    fn the_fast_text_message_path_agrees_with_the_general_parser(v in text_message_like()) {
        let bytes = serde_json::to_vec(&v).expect("encode");
        // The same request with the method name escaped: the fast path never takes it, so
        // this is the general parser's answer.
        let text = String::from_utf8(bytes.clone()).expect("utf-8");
        let general = text.replacen("\"textMessage\"", "\"textMessag\\u0065\"", 1);
        prop_assert_ne!(&general, &text);
        let fast = Request::parse(&bytes, &limits());
        let slow = Request::parse(general.as_bytes(), &limits());
        prop_assert_eq!(&fast, &slow);
        if let Ok(Request { id, call: Call::TextMessage(t) }) = fast {
            let ts = "2026-12-02T12:00:00.5Z";
            prop_assert_eq!(
                frame::stored_text(id.as_ref(), &t, ts),
                frame::stored_message("textMessage", id.as_ref(), t.params(), ts)
            );
        }
    }

    #[test]
    fn request_shaped_objects_are_accepted_within_bounds_or_rejected_with_a_documented_code(v in request_like()) {
        let bytes = serde_json::to_vec(&v).expect("encode");
        match Request::parse(&bytes, &limits()) {
            Ok(r) => check_accepted(&r),
            Err(rej) => {
                let code = rej.error.code.code();
                prop_assert!(documented(code), "undocumented code {code}");
                prop_assert_ne!(code, ErrorCode::Parse.code(), "valid JSON is never a parse error");
            }
        }
    }
}
