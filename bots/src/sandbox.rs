//! The sandbox scripts run in: an embedded Rhai engine with no file system, no network, no
//! clock and no `eval`, bounded in operations, call depth, expression depth, string, array
//! and map sizes, and wall-clock time.
//!
//! A script sees two constants and one function (see README "Bots"):
//!
//! - `message`: `#{event, text, userName, userId, roomName, date, uuid, id}` — the trigger
//!   (`event` is `"textMessage"` or `"newUser"`; `date` is what the client sent, `()` when
//!   absent; `id` is the trigger's `_id`, 0 for a `newUser` event);
//! - `bot`: `#{name, room}`;
//! - `random(n)`: an integer in `0..n`, drawn from a generator seeded by the trigger, so the
//!   same trigger handled twice (a redelivery) draws the same numbers.
//!
//! Its value is the reply: `()` (none), a string (one), or an array of strings (several).
//! Everything it cannot do ends in one [`Failure`], never in a panic or a stuck thread.
//!
//! It knows nothing of NATS, rooms or storage: [`crate::worker`] calls [`Sandbox::run`] on
//! a blocking thread and decides what a failure means for the bot.
//!
//! Why ~400 lines: the engine's limits and the outcome table belong together; ~120 lines are
//! unit tests.

use std::cell::Cell;
use std::time::{Duration, Instant};

use rhai::{Array, Dynamic, Engine, EvalAltResult, Map, Scope, AST};

/// The limits every script runs under.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Rhai operations per run (a loop that never ends runs out of these).
    pub max_operations: u64,
    /// Nested function calls (deep recursion).
    pub max_call_levels: usize,
    /// Longest string a script may build, in bytes.
    pub max_string_bytes: usize,
    /// Largest array or map a script may build.
    pub max_collection: usize,
    /// Wall-clock bound of one run.
    pub timeout: Duration,
    /// Most replies one run may return (the rest are dropped).
    pub max_replies: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_operations: 200_000,
            max_call_levels: 32,
            max_string_bytes: 16 * 1024,
            max_collection: 1024,
            timeout: Duration::from_millis(500),
            max_replies: 5,
        }
    }
}

/// The trigger as a script sees it.
#[derive(Debug, Clone, Default)]
pub struct Trigger {
    pub event: String,
    pub text: String,
    pub user_name: String,
    pub user_id: String,
    pub room_name: String,
    pub date: Option<serde_json::Value>,
    pub uuid: String,
    pub id: u64,
    /// Seeds `random(n)`.
    pub seed: u64,
}

/// Why a run produced no replies. Each has a stable name, used in metrics and the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Ran out of operations (an endless or too long loop).
    Operations,
    /// Ran past the wall-clock bound.
    Timeout,
    /// Too many nested calls (deep recursion).
    Recursion,
    /// Built a string, array or map over the limits.
    TooLarge(String),
    /// Threw, or failed at run time (unknown function, type mismatch, ...).
    Error(String),
    /// Returned something that is not `()`, a string or an array of strings.
    BadReturn(String),
}

impl Failure {
    /// The metric label and API name of the failure.
    pub fn reason(&self) -> &'static str {
        match self {
            Failure::Operations => "operations",
            Failure::Timeout => "timeout",
            Failure::Recursion => "recursion",
            Failure::TooLarge(_) => "too_large",
            Failure::Error(_) => "error",
            Failure::BadReturn(_) => "bad_return",
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Operations => write!(f, "stopped: too many operations (an endless loop?)"),
            Failure::Timeout => write!(f, "stopped: ran past its time limit"),
            Failure::Recursion => write!(f, "stopped: calls nested too deeply (recursion)"),
            Failure::TooLarge(what) => write!(f, "stopped: {what} over the size limit"),
            Failure::Error(e) => write!(f, "script error: {e}"),
            Failure::BadReturn(t) => write!(
                f,
                "the script returned {t}; return (), a string or an array of strings"
            ),
        }
    }
}

thread_local! {
    /// The running script's deadline (the progress callback runs on the script's thread).
    static DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
    /// The state of `random(n)` for the running script.
    static RNG: Cell<u64> = const { Cell::new(0) };
}

/// The engine, configured once and shared by every run (it is `Send + Sync`).
pub struct Sandbox {
    engine: Engine,
    limits: Limits,
}

impl Sandbox {
    pub fn new(limits: Limits) -> Sandbox {
        let mut engine = Engine::new();
        engine
            .set_max_operations(limits.max_operations.max(1))
            .set_max_call_levels(limits.max_call_levels.max(1))
            .set_max_expr_depths(64, 32)
            .set_max_string_size(limits.max_string_bytes.max(1))
            .set_max_array_size(limits.max_collection.max(1))
            .set_max_map_size(limits.max_collection.max(1))
            .set_max_variables(256)
            .set_max_functions(64)
            .set_max_modules(0)
            .set_module_resolver(rhai::module_resolvers::DummyModuleResolver::new())
            .disable_symbol("eval")
            // print and debug go nowhere: a script has no side effects but its replies.
            .on_print(|_| {})
            .on_debug(|_, _, _| {})
            .on_progress(|_| {
                let late = DEADLINE.with(|d| d.get().is_some_and(|t| Instant::now() >= t));
                late.then(|| Dynamic::from("timeout"))
            });
        engine.register_fn("random", |n: rhai::INT| -> rhai::INT {
            if n <= 0 {
                return 0;
            }
            let r = RNG.with(|s| {
                let state = s.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
                s.set(state);
                mix64(state)
            });
            (r % n as u64) as rhai::INT
        });
        Sandbox { engine, limits }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Compile a script: the check on upload, and what the worker runs. The error says
    /// where and what (`Syntax error: ... (line 3, position 7)`).
    pub fn compile(&self, script: &str) -> Result<AST, String> {
        self.engine.compile(script).map_err(|e| e.to_string())
    }

    /// Run `ast` on `trigger` for bot `name` in `room`; blocks for at most the time limit.
    pub fn run(
        &self,
        ast: &AST,
        bot: &str,
        room: &str,
        trigger: &Trigger,
    ) -> Result<Vec<String>, Failure> {
        let mut scope = Scope::new();
        scope.push_constant("message", message_map(trigger));
        let mut b = Map::new();
        b.insert("name".into(), bot.into());
        b.insert("room".into(), room.into());
        scope.push_constant("bot", b);
        DEADLINE.with(|d| d.set(Some(Instant::now() + self.limits.timeout)));
        RNG.with(|s| s.set(trigger.seed));
        let out = self.engine.eval_ast_with_scope::<Dynamic>(&mut scope, ast);
        DEADLINE.with(|d| d.set(None));
        let value = out.map_err(|e| failure(&e))?;
        replies(value, self.limits.max_replies)
    }
}

fn message_map(t: &Trigger) -> Map {
    let mut m = Map::new();
    m.insert("event".into(), t.event.clone().into());
    m.insert("text".into(), t.text.clone().into());
    m.insert("userName".into(), t.user_name.clone().into());
    m.insert("userId".into(), t.user_id.clone().into());
    m.insert("roomName".into(), t.room_name.clone().into());
    m.insert("uuid".into(), t.uuid.clone().into());
    m.insert("id".into(), (t.id.min(i64::MAX as u64) as rhai::INT).into());
    let date = match &t.date {
        Some(serde_json::Value::Number(n)) => n
            .as_i64()
            .map(Dynamic::from)
            .unwrap_or_else(|| n.to_string().into()),
        Some(serde_json::Value::String(s)) => s.clone().into(),
        _ => Dynamic::UNIT,
    };
    m.insert("date".into(), date);
    m
}

/// What an error from the engine means.
fn failure(e: &EvalAltResult) -> Failure {
    match e.unwrap_inner() {
        EvalAltResult::ErrorTooManyOperations(_) => Failure::Operations,
        EvalAltResult::ErrorTerminated(..) => Failure::Timeout,
        EvalAltResult::ErrorStackOverflow(_) => Failure::Recursion,
        EvalAltResult::ErrorDataTooLarge(what, _) => Failure::TooLarge(what.clone()),
        EvalAltResult::ErrorRuntime(v, pos) => {
            Failure::Error(format!("thrown: {} ({pos})", truncate(&v.to_string(), 200)))
        }
        other => Failure::Error(truncate(&other.to_string(), 300)),
    }
}

/// The replies a script's value stands for (at most `max`, the rest dropped).
fn replies(value: Dynamic, max: usize) -> Result<Vec<String>, Failure> {
    if value.is_unit() {
        return Ok(Vec::new());
    }
    if value.is_string() {
        let s = value.into_string().unwrap_or_default();
        return Ok(if s.is_empty() { Vec::new() } else { vec![s] });
    }
    if value.is_array() {
        let arr: Array = value.cast();
        let mut out = Vec::new();
        for v in arr {
            if !v.is_string() {
                return Err(Failure::BadReturn(format!(
                    "an array holding a {}",
                    v.type_name()
                )));
            }
            let s = v.into_string().unwrap_or_default();
            if !s.is_empty() && out.len() < max {
                out.push(s);
            }
        }
        return Ok(out);
    }
    Err(Failure::BadReturn(format!("a {}", value.type_name())))
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// The splitmix64 output function.
fn mix64(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sandbox() -> Sandbox {
        Sandbox::new(Limits {
            timeout: Duration::from_secs(5),
            ..Limits::default()
        })
    }

    fn run(script: &str, text: &str) -> Result<Vec<String>, Failure> {
        let s = sandbox();
        let ast = s.compile(script).expect("compiles");
        let t = Trigger {
            event: "textMessage".into(),
            text: text.into(),
            user_name: "Ann".into(),
            room_name: "r".into(),
            seed: 42,
            ..Trigger::default()
        };
        s.run(&ast, "b", "r", &t)
    }

    #[test]
    fn replies_from_values() {
        assert_eq!(run("()", "x"), Ok(vec![]));
        assert_eq!(
            run(r#""hi " + message.userName"#, "x"),
            Ok(vec!["hi Ann".into()])
        );
        assert_eq!(run(r#"["a", "b"]"#, "x"), Ok(vec!["a".into(), "b".into()]));
        assert_eq!(run(r#"[1]"#, "x").unwrap_err().reason(), "bad_return");
        assert_eq!(run("42", "x").unwrap_err().reason(), "bad_return");
        assert_eq!(
            run(r#"let a = []; for i in 0..10 { a.push("r") } a"#, "x")
                .unwrap()
                .len(),
            5,
            "at most max_replies"
        );
    }

    #[test]
    fn each_abuse_has_its_outcome() {
        assert_eq!(run("loop { }", "x"), Err(Failure::Operations));
        assert_eq!(
            run(r#"let s = "x"; loop { s += s; }"#, "x")
                .unwrap_err()
                .reason(),
            "too_large"
        );
        assert_eq!(
            run(r#"let a = []; loop { a.push(1); }"#, "x")
                .unwrap_err()
                .reason(),
            "too_large"
        );
        assert_eq!(
            run("fn f(n) { f(n + 1) } f(0)", "x"),
            Err(Failure::Recursion)
        );
        let thrown = run(r#"throw "boom""#, "x").unwrap_err();
        assert_eq!(thrown.reason(), "error");
        assert!(thrown.to_string().contains("boom"), "{thrown}");
        assert_eq!(run("no_such_fn()", "x").unwrap_err().reason(), "error");
    }

    #[test]
    fn the_clock_stops_a_slow_script() {
        let s = Sandbox::new(Limits {
            max_operations: u64::MAX / 2,
            timeout: Duration::from_millis(50),
            ..Limits::default()
        });
        let ast = s.compile("loop { }").unwrap();
        let started = Instant::now();
        assert_eq!(
            s.run(&ast, "b", "r", &Trigger::default()),
            Err(Failure::Timeout)
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn no_eval_no_clock_no_import_no_print() {
        let s = sandbox();
        assert!(s.compile(r#"eval("1")"#).is_err(), "eval is disabled");
        assert_eq!(run("timestamp()", "x").unwrap_err().reason(), "error");
        assert_eq!(
            run(r#"import "x" as y; ()"#, "x").unwrap_err().reason(),
            "error"
        );
        assert_eq!(
            run(r#"print("x"); debug("y"); "ok""#, "x"),
            Ok(vec!["ok".into()])
        );
    }

    #[test]
    fn compile_errors_say_where() {
        let e = sandbox().compile("let x = ;").unwrap_err();
        assert!(e.contains("line 1"), "{e}");
    }

    #[test]
    fn random_is_seeded_by_the_trigger() {
        let a = run(
            "[random(6).to_string(), random(6).to_string(), random(1000000).to_string()]",
            "x",
        )
        .unwrap();
        let b = run(
            "[random(6).to_string(), random(6).to_string(), random(1000000).to_string()]",
            "x",
        )
        .unwrap();
        assert_eq!(a, b);
        for v in &a[..2] {
            let n: i64 = v.parse().unwrap();
            assert!((0..6).contains(&n));
        }
    }
}
