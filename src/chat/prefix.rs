//! Prefix renders without rendering the prefix again: the renders rule 45 asks for
//! (`render(messages[..k], add_generation_prompt)`), each made in time independent of `k`, so
//! that locating every turn of a conversation costs about two full renders instead of one per
//! turn (docs/chat-templates.md, "Prefix renders").
//!
//! A template is a deterministic program: two runs that make the same observations of their
//! inputs do the same thing. The run on `messages[..k]` and the run on all `n` messages observe
//! the same values until the template reads a message at index `k` or later, reads the length of
//! the list, or reaches the end of the loop over it. So the full rendering, made once with the
//! list wrapped in an object that records every read (which index, and whether the length was
//! read) and where in the output each turn of the template's loop over the messages started,
//! tells for every `k` the first turn of the loop where the two runs may part. Everything the
//! full run wrote before that turn is the start of the prefix render, byte for byte.
//!
//! The rest (that turn, the later ones the prefix has, and what follows the loop: the
//! generation prompt) is rendered for real, by running the template on `messages[..k]` with
//! its loop started at that turn ([`Plan`] rewrites the template so that the loop can start
//! there and `loop.index0`, `loop.index`, `loop.first` still count from the first message). The
//! turns skipped leave nothing behind: in Jinja a variable set in a loop turn is gone in the next
//! (as in minijinja), and a template that could carry state from turn to turn (a `namespace`
//! written in the loop or in a macro, `cycler`, `joiner`, `loop.changed`) gets no plan.
//!
//! Where any condition fails the prefix is rendered in full, as before; the result is the same
//! text either way.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use minijinja::machinery::ast::{CallArg, Expr, Stmt};
use minijinja::value::{Enumerator, Object, ObjectRepr, ValueKind};
use minijinja::{Error, ErrorKind, State, Value};

/// The name the instrumented template gives its hooks (no template uses it).
pub(crate) const HOOKS: &str = "__sftmask";
/// The index of the first turn the loop runs (0 but in a tail render).
pub(crate) const OFFSET: &str = "__sftmask_off";

/// How one template's prefix renders are made: the instrumented source, and what its loop over
/// the messages reads.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// The template with the loop over the messages wrapped in the hooks.
    pub(crate) source: String,
    /// The loop writes namespace attributes (kept at each turn, put back in a tail run).
    pub(crate) stateful: bool,
}

/// What the walk over the template found.
#[derive(Default)]
struct Walk<'s> {
    source: &'s str,
    /// Names that hold the messages or a slice `[c:]` of them.
    aliases: HashSet<&'s str>,
    /// The loops over them outside any loop, macro or captured block.
    loops: Vec<(usize, usize, usize, usize)>,
    /// The loop taken as the loop over the messages (its start), in the second pass.
    chosen: Option<usize>,
    /// Its list's name.
    iter: &'s str,
    /// The parameters of the macros being walked.
    params: Vec<&'s str>,
    edits: Vec<(usize, usize, String)>,
    /// Namespace attributes the loop writes (`ns.attr`).
    state: std::collections::BTreeSet<(&'s str, &'s str)>,
    refused: Option<String>,
}

fn refuse(walk: &mut Walk<'_>, why: impl Into<String>) {
    if walk.refused.is_none() {
        walk.refused = Some(why.into());
    }
}

/// Where the walker is.
#[derive(Clone, Copy, Default)]
struct Scope {
    /// Inside the body of the loop over the messages (not of a loop nested in it).
    main: bool,
    /// Inside that body at any depth.
    in_main: bool,
    /// Inside some loop, macro or captured block (a loop here is not the main loop).
    nested: bool,
    in_macro: bool,
}

/// The plan for `source` (after the generation-tag rewrite), or why there is none (see the tests
/// below and [`crate::chat::ChatTemplate::prefix_renders_in_full`]).
pub(crate) fn plan(source: &str, syntax: minijinja::syntax::SyntaxConfig) -> Result<Plan, String> {
    if source.contains(HOOKS) {
        return Err(format!("the template names {HOOKS}"));
    }
    let ast = minijinja::machinery::parse(source, "chat_template", syntax).map_err(|e| e.to_string())?;
    let Stmt::Template(t) = &ast else {
        return Err("not a template".into());
    };
    let mut walk = Walk {
        source,
        aliases: HashSet::from(["messages"]),
        ..Walk::default()
    };
    // Aliases first (a `set` may come before or after its use in the source; two passes see
    // chains of them).
    for _ in 0..2 {
        aliases(&t.children, &mut walk);
    }
    // First pass: the loops over the messages; the largest is the conversation's (any other
    // is read through the recording list like any other read). Second pass: that loop's body.
    stmts(&t.children, Scope::default(), &mut walk);
    let chosen = walk.loops.iter().max_by_key(|l| l.3 - l.2).copied();
    let Some((iter_start, iter_end, start, _)) = chosen else {
        return Err("no loop over the messages outside any loop or macro".into());
    };
    walk = Walk {
        source,
        aliases: std::mem::take(&mut walk.aliases),
        chosen: Some(start),
        iter: &source[iter_start..iter_end],
        ..Walk::default()
    };
    stmts(&t.children, Scope::default(), &mut walk);
    if let Some(why) = walk.refused.take() {
        return Err(why);
    }
    let iter = &source[iter_start..iter_end];
    walk.edits.push((iter_start, iter_end, format!("{HOOKS}.main({iter})")));
    if !walk.state.is_empty() {
        // Right after the loop's tag: put the state back (a run that starts its loop at a later
        // turn), then keep it (the full run). The last tag ends as the loop's tag did, so that
        // the whitespace after it is trimmed or kept as before.
        let rest = &source[iter_end..];
        let close = rest.find("%}").ok_or("the loop's tag does not close")?;
        let (between, modifier) = match rest[..close].strip_suffix(['-', '+']) {
            Some(b) => (b, &rest[close - 1..close]),
            None => (&rest[..close], ""),
        };
        if !between.trim().is_empty() {
            return Err("the loop's tag holds more than its list".into());
        }
        let mut put = format!("{{% if {HOOKS}.restoring(loop.index0) %}}");
        let mut keep = String::new();
        for (ns, name) in &walk.state {
            put.push_str(&format!(
                "{{% if {ns} is defined %}}{{% set {ns}.{name} = {HOOKS}.restored('{ns}.{name}') %}}{{% endif %}}"
            ));
            keep.push_str(&format!("{{% do {HOOKS}.snap('{ns}.{name}', {ns}, '{name}') %}}"));
        }
        let text = format!("{put}{{% endif %}}{}{modifier}%}}", &keep[..keep.len() - 2]);
        let at = iter_end + close + 2;
        walk.edits.push((at, at, text));
    }
    walk.edits.sort_by_key(|e| e.0);
    let mut out = String::with_capacity(source.len() + 256);
    let mut at = 0;
    for (s, e, text) in &walk.edits {
        if *s < at {
            return Err("overlapping rewrites".into());
        }
        out.push_str(&source[at..*s]);
        out.push_str(text);
        at = *e;
    }
    out.push_str(&source[at..]);
    Ok(Plan {
        source: out,
        stateful: !walk.state.is_empty(),
    })
}

fn offsets(span: minijinja::machinery::Span) -> (usize, usize) {
    (span.start_offset as usize, span.end_offset as usize)
}

/// The name a `set` target or loop iterable is, if it is a plain name.
fn var_name<'s>(e: &Expr<'s>) -> Option<&'s str> {
    match e {
        Expr::Var(v) => Some(v.id),
        _ => None,
    }
}

/// `name` or `name[c:]` with `c` a non-negative integer literal (or absent), `name` an alias.
fn alias_slice<'s>(e: &Expr<'s>, walk: &Walk<'s>) -> Option<(&'s str, Option<u64>)> {
    match e {
        Expr::Var(v) if walk.aliases.contains(v.id) => Some((v.id, None)),
        Expr::Slice(s) if s.stop.is_none() && s.step.is_none() => {
            let name = var_name(&s.expr).filter(|n| walk.aliases.contains(n))?;
            let start = match &s.start {
                None => 0,
                Some(Expr::Const(c)) => u64::try_from(c.value.clone()).ok()?,
                Some(_) => return None,
            };
            Some((name, Some(start)))
        }
        _ => None,
    }
}

fn aliases<'s>(body: &[Stmt<'s>], walk: &mut Walk<'s>) {
    for s in body {
        match s {
            Stmt::Set(set) => {
                if let (Some(name), Some(_)) = (var_name(&set.target), alias_slice(&set.expr, walk)) {
                    walk.aliases.insert(name);
                }
            }
            Stmt::IfCond(c) => {
                aliases(&c.true_body, walk);
                aliases(&c.false_body, walk);
            }
            Stmt::WithBlock(w) => aliases(&w.body, walk),
            Stmt::AutoEscape(a) => aliases(&a.body, walk),
            _ => {}
        }
    }
}

fn stmts<'s>(body: &[Stmt<'s>], scope: Scope, walk: &mut Walk<'s>) {
    for s in body {
        stmt(s, scope, walk);
    }
}

fn stmt<'s>(s: &Stmt<'s>, scope: Scope, walk: &mut Walk<'s>) {
    let captured = Scope {
        main: false,
        nested: true,
        ..scope
    };
    match s {
        Stmt::Template(t) => stmts(&t.children, scope, walk),
        Stmt::EmitExpr(e) => expr(&e.expr, scope, walk),
        Stmt::EmitRaw(_) => {}
        Stmt::ForLoop(f) => {
            let candidate = !scope.nested && var_name(&f.iter).is_some_and(|n| walk.aliases.contains(n));
            let (start, end) = offsets(f.span());
            let is_main = candidate && walk.chosen == Some(start);
            expr(&f.iter, scope, walk);
            if let Some(e) = &f.filter_expr {
                expr(e, scope, walk);
            }
            if candidate && walk.chosen.is_none() {
                let (iter_start, iter_end) = offsets(f.iter.span());
                walk.loops.push((iter_start, iter_end, start, end));
            }
            if is_main {
                if f.recursive || f.filter_expr.is_some() || !f.else_body.is_empty() {
                    refuse(
                        walk,
                        "the loop over the messages is recursive, filtered or has an else branch",
                    );
                }
                let inner = Scope {
                    main: true,
                    in_main: true,
                    nested: true,
                    in_macro: scope.in_macro,
                };
                stmts(&f.body, inner, walk);
            } else {
                let inner = Scope {
                    main: false,
                    nested: true,
                    ..scope
                };
                stmts(&f.body, inner, walk);
                stmts(&f.else_body, inner, walk);
            }
        }
        Stmt::IfCond(c) => {
            expr(&c.expr, scope, walk);
            stmts(&c.true_body, scope, walk);
            stmts(&c.false_body, scope, walk);
        }
        Stmt::WithBlock(w) => {
            for (_, value) in &w.assignments {
                expr(value, scope, walk);
            }
            stmts(&w.body, scope, walk);
        }
        Stmt::Set(set) => {
            namespace_write(&set.target, scope, walk);
            expr(&set.expr, scope, walk);
        }
        Stmt::SetBlock(set) => {
            namespace_write(&set.target, scope, walk);
            if let Some(f) = &set.filter {
                expr(f, scope, walk);
            }
            stmts(&set.body, captured, walk);
        }
        Stmt::AutoEscape(a) => {
            expr(&a.enabled, scope, walk);
            stmts(&a.body, scope, walk);
        }
        Stmt::FilterBlock(f) => {
            expr(&f.filter, scope, walk);
            stmts(&f.body, captured, walk);
        }
        Stmt::Macro(m) => {
            if scope.in_main {
                refuse(walk, "a macro is defined inside the loop over the messages");
            }
            let inner = Scope {
                main: false,
                in_main: false,
                nested: true,
                in_macro: true,
            };
            for e in &m.defaults {
                expr(e, inner, walk);
            }
            let params = walk.params.len();
            walk.params.extend(m.args.iter().filter_map(var_name));
            stmts(&m.body, inner, walk);
            walk.params.truncate(params);
        }
        Stmt::CallBlock(c) => {
            if scope.in_main {
                refuse(walk, "a call block inside the loop over the messages");
            }
            call(&c.call.expr, &c.call.args, scope, walk);
            stmts(&c.macro_decl.body, captured, walk);
        }
        Stmt::Continue(_) => {}
        Stmt::Break(_) => {
            if scope.main {
                refuse(walk, "the loop over the messages can break");
            }
        }
        Stmt::Do(d) => call(&d.call.expr, &d.call.args, scope, walk),
        #[allow(unreachable_patterns)]
        _ => refuse(walk, "blocks, includes and imports are not planned"),
    }
}

/// `{% set ns.attr = ... %}` in the loop over the messages or in a macro: state that lives from
/// one turn to the next, kept at each turn's start and put back where a run starts its loop at
/// that turn.
fn namespace_write<'s>(target: &Expr<'s>, scope: Scope, walk: &mut Walk<'s>) {
    let attr = match target {
        Expr::GetAttr(g) => match &g.expr {
            Expr::Var(v) => Some((v.id, g.name)),
            _ => {
                refuse(walk, "an attribute of an expression is set");
                return;
            }
        },
        Expr::Tuple(t) if t.items.iter().any(|i| matches!(i, Expr::GetAttr(_))) => {
            refuse(walk, "namespace attributes are set by unpacking");
            return;
        }
        _ => None,
    };
    if let Some((ns, name)) = attr {
        if scope.in_macro && walk.params.contains(&ns) {
            refuse(walk, "a macro writes a namespace it is given");
        } else if scope.in_main || scope.in_macro {
            // A macro (which the loop may call) writes the template's namespace by its name;
            // one it makes itself lives for one call, and putting back a namespace of the same
            // name gives it the value it has in the prefix's run anyway.
            walk.state.insert((ns, name));
        }
    }
}

fn call<'s>(callee: &Expr<'s>, args: &[CallArg<'s>], scope: Scope, walk: &mut Walk<'s>) {
    expr(callee, scope, walk);
    for a in args {
        match a {
            CallArg::Pos(e) | CallArg::Kwarg(_, e) | CallArg::PosSplat(e) | CallArg::KwargSplat(e) => {
                expr(e, scope, walk)
            }
        }
    }
}

fn expr<'s>(e: &Expr<'s>, scope: Scope, walk: &mut Walk<'s>) {
    match e {
        Expr::Var(v) => match v.id {
            "loop" if scope.main => refuse(walk, "the loop over the messages uses `loop` as a value"),
            // Read through a hook, so that where the prompt flag is read is known.
            "add_generation_prompt" => {
                let (from, to) = offsets(v.span());
                walk.edits
                    .push((from, to, format!("{HOOKS}.prompt(add_generation_prompt)")));
            }
            "cycler" | "joiner" => refuse(walk, "the template uses cycler or joiner"),
            _ => {}
        },
        Expr::Const(_) => {}
        Expr::Slice(s) => {
            if let Some((name, Some(start))) = alias_slice(e, walk) {
                let (from, to) = offsets(s.span());
                if !walk.source[from..to].starts_with(name) {
                    refuse(walk, "a slice of the messages is not where its span says");
                }
                walk.edits.push((from, to, format!("{HOOKS}.skip({name}, {start})")));
                return;
            }
            expr(&s.expr, scope, walk);
            for part in [&s.start, &s.stop, &s.step].into_iter().flatten() {
                expr(part, scope, walk);
            }
        }
        Expr::UnaryOp(u) => expr(&u.expr, scope, walk),
        Expr::BinOp(b) => {
            expr(&b.left, scope, walk);
            expr(&b.right, scope, walk);
        }
        Expr::Compare(c) => {
            expr(&c.expr, scope, walk);
            for op in &c.ops {
                expr(&op.expr, scope, walk);
            }
        }
        Expr::IfExpr(i) => {
            expr(&i.test_expr, scope, walk);
            expr(&i.true_expr, scope, walk);
            if let Some(f) = &i.false_expr {
                expr(f, scope, walk);
            }
        }
        Expr::Filter(f) => {
            if let Some(e) = &f.expr {
                expr(e, scope, walk);
            }
            call_args(&f.args, scope, walk);
        }
        Expr::Test(t) => {
            expr(&t.expr, scope, walk);
            call_args(&t.args, scope, walk);
        }
        Expr::GetAttr(g) => {
            if let (true, Expr::Var(v)) = (scope.main, &g.expr) {
                if v.id == "loop" {
                    loop_attr(g.name, offsets(v.span()).0, offsets(g.span()).1, walk);
                    return;
                }
            }
            expr(&g.expr, scope, walk);
        }
        Expr::GetItem(g) => {
            expr(&g.expr, scope, walk);
            expr(&g.subscript_expr, scope, walk);
        }
        Expr::Call(c) => call(&c.expr, &c.args, scope, walk),
        Expr::List(l) => l.items.iter().for_each(|i| expr(i, scope, walk)),
        Expr::Tuple(t) => t.items.iter().for_each(|i| expr(i, scope, walk)),
        Expr::Map(m) => m.keys.iter().chain(&m.values).for_each(|i| expr(i, scope, walk)),
    }
}

fn call_args<'s>(args: &[CallArg<'s>], scope: Scope, walk: &mut Walk<'s>) {
    for a in args {
        match a {
            CallArg::Pos(e) | CallArg::Kwarg(_, e) | CallArg::PosSplat(e) | CallArg::KwargSplat(e) => {
                expr(e, scope, walk)
            }
        }
    }
}

/// `loop.<name>` in the loop over the messages, at `from..to` in the source: counted from the
/// first message whichever turn the loop starts at.
fn loop_attr(name: &str, from: usize, to: usize, walk: &mut Walk<'_>) {
    let text = format!("loop.{name}");
    if walk.source.get(from..to) != Some(text.as_str()) {
        refuse(walk, format!("`{text}` is not written plainly"));
        return;
    }
    let with = match name {
        "index0" => format!("(loop.index0 + {OFFSET})"),
        "index" => format!("(loop.index + {OFFSET})"),
        "first" => format!("(loop.index0 + {OFFSET} == 0)"),
        // Read through a hook, so that the turns that read it are known.
        "last" => format!("{HOOKS}.last(loop.last)"),
        // minijinja's adjacent items, read as items of the list (which the list records).
        "previtem" => format!("{HOOKS}.item({}, loop.index0 + {OFFSET} - 1)", walk.iter),
        "nextitem" => format!("{HOOKS}.item({}, loop.index0 + {OFFSET} + 1)", walk.iter),
        "depth" | "depth0" => return,
        other => {
            refuse(walk, format!("the loop over the messages reads loop.{other}"));
            return;
        }
    };
    walk.edits.push((from, to, with));
}

/// What one run of the instrumented template observed, shared by the objects it reads through.
#[derive(Debug)]
pub(crate) struct Shared {
    /// Bytes written so far (kept by the output writer).
    pub(crate) written: AtomicUsize,
    /// The loop turn the run starts its loop at (0: the full run).
    start: usize,
    /// A tail run puts back this state when its loop starts (`None`: the full run).
    restore: Option<Vec<(String, Value)>>,
    record: Mutex<Record>,
}

/// The reads of one stretch of the run: before the loop, or one turn of it.
#[derive(Debug, Clone, Default)]
struct Reads {
    /// The index in the whole list of the message the turn is for.
    base: usize,
    max_index: Option<usize>,
    len: bool,
    /// The turn read `loop.last` (which differs at the last message of a prefix).
    last: bool,
    /// It read `add_generation_prompt` (which differs in a render with the prompt).
    prompt: bool,
    /// The namespace attributes the loop writes, as they were when the turn started.
    state: Vec<(String, Value)>,
}

impl Reads {
    /// Nothing of the messages was read.
    fn none(&self) -> bool {
        self.max_index.is_none() && !self.len
    }
}

#[derive(Debug, Default)]
struct Record {
    before: Reads,
    turns: Vec<Reads>,
    /// Where each turn started in the output, and (last) where the loop ended.
    bounds: Vec<usize>,
    ended: bool,
    /// The reads after the loop.
    after: Reads,
    entered: usize,
    broken: bool,
    /// Tail run: where the loop started in the output.
    started_at: Option<usize>,
}

impl Record {
    fn current(&mut self) -> &mut Reads {
        if self.ended {
            &mut self.after
        } else if let Some(t) = self.turns.last_mut() {
            t
        } else {
            &mut self.before
        }
    }
}

impl Shared {
    /// The full run.
    pub(crate) fn full() -> Arc<Self> {
        Self::new(0, None)
    }

    /// A run whose loop starts at turn `start` with the full run's state there.
    pub(crate) fn tail(start: usize, trace: &Trace) -> Arc<Self> {
        let state = trace.turns.get(start).map(|t| t.state.clone()).unwrap_or_default();
        Self::new(start, Some(state))
    }

    fn new(start: usize, restore: Option<Vec<(String, Value)>>) -> Arc<Self> {
        Arc::new(Shared {
            written: AtomicUsize::new(0),
            start,
            restore,
            record: Mutex::new(Record::default()),
        })
    }

    /// The loop turn this run starts its loop at.
    pub(crate) fn start(&self) -> usize {
        self.start
    }

    fn with<T>(&self, f: impl FnOnce(&mut Record) -> T) -> T {
        // A poisoned lock (a panic in another read of the same run) cannot happen: nothing
        // here panics while holding it. Recover the data anyway rather than panic.
        let mut r = self.record.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut r)
    }

    fn read_index(&self, index: usize) {
        self.with(|r| {
            let c = r.current();
            c.max_index = Some(c.max_index.map_or(index, |m| m.max(index)));
        });
    }

    fn read_len(&self) {
        self.with(|r| r.current().len = true);
    }

    fn read_last(&self) {
        self.with(|r| r.current().last = true);
    }

    fn read_prompt(&self) {
        self.with(|r| r.current().prompt = true);
    }

    fn turn(&self, base: Option<usize>) {
        let at = self.written.load(Ordering::Relaxed);
        self.with(|r| {
            if r.started_at.is_none() {
                r.started_at = Some(at);
            }
            if r.ended {
                return;
            }
            r.bounds.push(at);
            match base {
                Some(base) => r.turns.push(Reads {
                    base,
                    max_index: Some(base),
                    ..Reads::default()
                }),
                None => r.ended = true,
            }
        });
    }

    /// What the full run observed, or `None` when it cannot serve prefixes (the loop ran other
    /// than once over the messages object).
    pub(crate) fn trace(&self) -> Option<Trace> {
        self.with(|r| {
            (r.entered == 1 && r.ended && !r.broken && r.bounds.len() == r.turns.len() + 1).then(|| Trace {
                before: r.before.clone(),
                turns: r.turns.clone(),
                bounds: r.bounds.clone(),
            })
        })
    }

    /// Tail run: where its loop started in the output, and whether what follows the loop read
    /// nothing of the messages (so that it writes the same after any prefix).
    pub(crate) fn started_at(&self) -> Option<(usize, bool)> {
        self.with(|r| {
            let at = r.started_at.filter(|_| r.entered == 1 && !r.broken)?;
            Some((at, r.ended && r.after.none()))
        })
    }
}

/// The observations of the full run of one conversation.
#[derive(Debug, Clone)]
pub(crate) struct Trace {
    before: Reads,
    turns: Vec<Reads>,
    /// Output offset where each loop turn started, then where the loop ended.
    pub(crate) bounds: Vec<usize>,
}

impl Trace {
    /// The first loop turn where the run on the first `k` messages (the last of them replaced
    /// when `replaced`) may part from the full run, and whether that is where the prefix's loop
    /// ends (nothing of the loop is left to render); `None` when it may part before the loop.
    pub(crate) fn parts_at(&self, plan: &Plan, k: usize, replaced: bool, prompt: bool) -> Option<(usize, bool)> {
        if k == 0 {
            return None;
        }
        // The first index whose value differs (absent from the prefix, or replaced).
        let differs = if replaced { k - 1 } else { k };
        let unsafe_reads = |r: &Reads| r.len || r.max_index.is_some_and(|m| m >= differs) || (prompt && r.prompt);
        if unsafe_reads(&self.before) {
            return None;
        }
        for (j, t) in self.turns.iter().enumerate() {
            if t.base >= k {
                // With state, what follows the loop may read it: the prefix's last turn is run
                // again (from the state before it) rather than the loop skipped.
                return Some(if plan.stateful && j > 0 {
                    (j - 1, false)
                } else {
                    (j, true)
                });
            }
            if unsafe_reads(t) || (t.last && t.base + 1 == k) {
                return Some((j, false));
            }
        }
        let j = self.turns.len();
        Some(if plan.stateful && j > 0 {
            (j - 1, false)
        } else {
            (j, true)
        })
    }
}

/// The conversation as the template sees it: a list that records what is read of it.
#[derive(Debug)]
pub(crate) struct Messages {
    items: Arc<Vec<Value>>,
    /// A slice `[offset:]` of the whole list (`messages[1:]`).
    offset: usize,
    /// A slice is (as minijinja's slice of a list) an iterable, not a sequence.
    sliced: bool,
    shared: Arc<Shared>,
}

impl Messages {
    pub(crate) fn value(items: Vec<Value>, shared: Arc<Shared>) -> Value {
        Value::from_object(Messages {
            items: Arc::new(items),
            offset: 0,
            sliced: false,
            shared,
        })
    }

    fn len(&self) -> usize {
        self.items.len().saturating_sub(self.offset)
    }
}

impl Object for Messages {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        if self.sliced {
            ObjectRepr::Iterable
        } else {
            ObjectRepr::Seq
        }
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        // A negative index (tried first on an iterable) is resolved by minijinja with the
        // length, then asked for again.
        let i = usize::try_from(key.clone()).ok()?;
        let base = self.offset.checked_add(i)?;
        self.shared.read_index(base);
        self.items.get(base).cloned()
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Seq(self.len())
    }

    fn enumerator_len(self: &Arc<Self>) -> Option<usize> {
        self.shared.read_len();
        Some(self.len())
    }

    fn is_true(self: &Arc<Self>) -> bool {
        self.shared.read_len();
        self.len() != 0
    }
}

/// The loop over the messages: records where each turn starts; starts at the run's turn.
#[derive(Debug)]
struct Loop {
    messages: Arc<Messages>,
}

impl Object for Loop {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Iterable
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        let m = self.messages.clone();
        m.shared.with(|r| r.entered += 1);
        let next = m.shared.start.min(m.len());
        Enumerator::Iter(Box::new(Turns { m, next }))
    }
}

struct Turns {
    m: Arc<Messages>,
    next: usize,
}

impl Iterator for Turns {
    type Item = Value;

    fn next(&mut self) -> Option<Value> {
        if self.next >= self.m.len() {
            self.m.shared.turn(None);
            return None;
        }
        let base = self.m.offset + self.next;
        self.next += 1;
        self.m.shared.turn(Some(base));
        self.m.items.get(base).cloned()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.m.len().saturating_sub(self.next);
        (left, Some(left))
    }
}

/// `__sftmask`: `main(messages)` wraps the loop's list, `skip(messages, c)` is `messages[c:]`.
#[derive(Debug)]
pub(crate) struct Hooks {
    pub(crate) shared: Arc<Shared>,
}

impl Object for Hooks {
    fn call_method(self: &Arc<Self>, _state: &mut State<'_, '_>, method: &str, args: &[Value]) -> Result<Value, Error> {
        let bad = || Error::new(ErrorKind::InvalidOperation, "sftmask hook called wrongly");
        let value = args.first().ok_or_else(bad)?;
        match method {
            "main" => match value.downcast_object::<Messages>() {
                Some(messages) => Ok(Value::from_object(Loop { messages })),
                None => {
                    // The template loops over a list it made itself: no plan for this run.
                    self.shared.with(|r| r.broken = true);
                    Ok(value.clone())
                }
            },
            "skip" => {
                let c = args
                    .get(1)
                    .and_then(|c| usize::try_from(c.clone()).ok())
                    .ok_or_else(bad)?;
                match value.downcast_object::<Messages>() {
                    Some(m) => Ok(Value::from_object(Messages {
                        items: m.items.clone(),
                        offset: (m.offset + c).min(m.items.len()),
                        sliced: true,
                        shared: m.shared.clone(),
                    })),
                    None if value.is_undefined() || value.is_none() => Ok(Value::from(Vec::<Value>::new())),
                    None => {
                        self.shared.with(|r| r.broken = true);
                        let items: Vec<Value> = value.try_iter()?.skip(c).collect();
                        Ok(Value::from(items))
                    }
                }
            }
            "last" => {
                self.shared.read_last();
                Ok(value.clone())
            }
            "prompt" => {
                self.shared.read_prompt();
                Ok(value.clone())
            }
            // `item(list, i)`: the list's item `i`, undefined outside it (`loop.previtem`).
            "item" => {
                let i = args.get(1).and_then(Value::as_i64).ok_or_else(bad)?;
                match usize::try_from(i) {
                    Ok(i) => Ok(value.get_item(&Value::from(i)).unwrap_or_default()),
                    Err(_) => Ok(Value::UNDEFINED),
                }
            }
            // `restoring(loop.index0)`: a tail run at its first turn.
            "restoring" => Ok(Value::from(self.shared.restore.is_some() && value.as_i64() == Some(0))),
            "restored" => {
                let key = value.as_str().ok_or_else(bad)?;
                let state = self.shared.restore.as_deref().unwrap_or_default();
                Ok(state
                    .iter()
                    .find(|(k, _)| k == key)
                    .map_or(Value::UNDEFINED, |(_, v)| v.clone()))
            }
            // `snap(key, ns, attr)`: the full run keeps the attribute as the turn starts.
            "snap" => {
                let key = value.as_str().ok_or_else(bad)?;
                let (ns, attr) = (
                    args.get(1).ok_or_else(bad)?,
                    args.get(2).and_then(|a| a.as_str()).ok_or_else(bad)?,
                );
                if self.shared.restore.is_none() && !ns.is_undefined() {
                    let v = ns.get_attr(attr).unwrap_or_default();
                    // Only plain values can be handed to another run (a namespace in a
                    // namespace would be shared with it).
                    let plain = matches!(
                        v.kind(),
                        ValueKind::Undefined
                            | ValueKind::None
                            | ValueKind::Bool
                            | ValueKind::Number
                            | ValueKind::String
                    );
                    self.shared.with(|r| {
                        if plain {
                            r.current().state.push((key.to_owned(), v));
                        } else {
                            r.broken = true;
                        }
                    });
                }
                Ok(Value::from(()))
            }
            _ => Err(Error::from(ErrorKind::UnknownMethod)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn syntax() -> minijinja::syntax::SyntaxConfig {
        minijinja::syntax::SyntaxConfig::default()
    }

    #[test]
    fn plans_a_chatml_loop_and_rewrites_the_loop_counters() {
        let src = "{% if messages[0].role == 'system' %}{% set messages = messages[1:] %}{% endif %}\
                   {% for m in messages %}{% if loop.first %}F{% endif %}{{ loop.index0 }}{{ m.content }}{% endfor %}\
                   {% if add_generation_prompt %}A:{% endif %}";
        let p = plan(src, syntax()).unwrap();
        assert!(
            p.source.contains("{% if __sftmask.prompt(add_generation_prompt) %}A:"),
            "{}",
            p.source
        );
        assert!(p.source.contains("__sftmask.skip(messages, 1)"), "{}", p.source);
        assert!(p.source.contains("for m in __sftmask.main(messages)"), "{}", p.source);
        assert!(p.source.contains("(loop.index0 + __sftmask_off == 0)"), "{}", p.source);
        assert!(p.source.contains("{{ (loop.index0 + __sftmask_off) }}"), "{}", p.source);
    }

    #[test]
    fn refuses_what_carries_state_or_reads_the_length() {
        for src in [
            "{% for m in messages %}{{ loop.length }}{% endfor %}",
            "{% for m in messages %}{{ loop.revindex }}{% endfor %}",
            "{% for m in messages %}{% if m.x %}{% break %}{% endif %}{% endfor %}",
            "{% set j = joiner(',') %}{% for m in messages %}{{ j() }}{% endfor %}",
            "{% for m in messages %}{{ loop.changed(m.role) }}{% endfor %}",
            "{% for m in messages %}{% set l = loop %}{% endfor %}",
            "{% macro f(ns) %}{% set ns.a = 1 %}{% endmacro %}{% for m in messages %}{% endfor %}",
            "{% for m in messages if m.role != 'system' %}{% endfor %}",
            "no loop",
        ] {
            assert!(plan(src, syntax()).is_err(), "{src}");
        }
        // A namespace written before the loop is read-only state for it: planned.
        let p = plan(
            "{% set ns = namespace(a=1) %}{% for m in messages %}{{ ns.a }}{% for t in m.tools %}{{ loop.length }}{% endfor %}{% endfor %}",
            syntax(),
        );
        assert!(p.is_ok());
        // The prompt read inside the loop: planned, but prompt renders are made in full.
        let p = plan(
            "{% for m in messages %}{% if loop.last and add_generation_prompt %}A{% endif %}{% endfor %}",
            syntax(),
        )
        .unwrap();
        assert!(p
            .source
            .contains("__sftmask.last(loop.last) and __sftmask.prompt(add_generation_prompt)"));
    }
}
