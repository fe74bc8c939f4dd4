//! `${VAR}` expansion in string values.
//!
//! Runs on the parsed YAML tree, one string scalar at a time, rather than on the file's text as
//! the Go cc-relay did (`os.ExpandEnv`): comments are never expanded, a value can never inject
//! YAML structure, and each problem can name the field it is in.
//!
//! Syntax: `${VAR}`, `$VAR` (name = `[A-Za-z_][A-Za-z0-9_]*`), `${VAR:-default}` (default used
//! when VAR is unset *or empty*, and itself expanded), `$$` for a literal `$`. A `$` followed by
//! anything else stays a literal `$`. Unlike the Go version, an unset variable without a default
//! is an error: a typo in a variable name must not silently produce an empty key.

/// How deep `${A:-${B:-...}}` defaults may nest. Expansion recurses into defaults, so without
/// a bound a hostile or broken file (`${N:-` × 10,000) would overflow the stack of a running
/// relay on reload; real configs nest one or two levels.
pub(crate) const MAX_NESTING: usize = 16;

/// Looks a variable up; `None` = unset.
pub(crate) type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The process environment. A variable whose value is not valid Unicode counts as unset (it
/// could not be sent in a header anyway).
pub(crate) fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Expands `input`. Errors are messages without the field path (the caller adds it) and never
/// contain a variable's value or a default's text, which may be secrets.
pub(crate) fn expand(input: &str, env: Env<'_>) -> Result<String, Vec<String>> {
    expand_tracked(input, env).map(|e| e.text)
}

/// The result of expanding one string.
pub(crate) struct Expansion {
    pub text: String,
    /// Variables referenced without a default (`${VAR}`, `$VAR`) that are set but empty: what
    /// made an empty result empty, as opposed to an explicit empty default (`${VAR:-}`).
    pub empty_variables: Vec<String>,
}

/// [`expand`], also telling which variables were set but empty.
pub(crate) fn expand_tracked(input: &str, env: Env<'_>) -> Result<Expansion, Vec<String>> {
    let mut expander = Expander {
        env,
        out: String::with_capacity(input.len()),
        errors: Vec::new(),
        empty_variables: Vec::new(),
    };
    if !input.contains('$') {
        expander.out.push_str(input);
    } else {
        expander.expand_into(input, 0);
    }
    if expander.errors.is_empty() {
        Ok(Expansion {
            text: expander.out,
            empty_variables: expander.empty_variables,
        })
    } else {
        Err(expander.errors)
    }
}

struct Expander<'a> {
    env: Env<'a>,
    out: String,
    errors: Vec<String>,
    empty_variables: Vec<String>,
}

impl Expander<'_> {
    /// A variable referenced without a default.
    fn substitute(&mut self, name: &str) {
        match (self.env)(name) {
            Some(v) => {
                if v.is_empty() {
                    self.empty_variables.push(name.to_string());
                }
                self.out.push_str(&v);
            }
            None => self.errors.push(unset(name)),
        }
    }

    fn expand_into(&mut self, input: &str, depth: usize) {
        let bytes = input.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            let Some(offset) = input[i..].find('$') else {
                self.out.push_str(&input[i..]);
                break;
            };
            self.out.push_str(&input[i..i + offset]);
            i += offset;
            // `i` is at a `$`.
            match bytes.get(i + 1) {
                Some(b'$') => {
                    self.out.push('$');
                    i += 2;
                }
                Some(b'{') => {
                    let start = i + 2;
                    let Some(len) = matching_brace(&input[start..]) else {
                        self.errors
                            .push("unterminated `${` (write `$$` for a literal `$`)".to_string());
                        return;
                    };
                    let inner = &input[start..start + len];
                    self.braced(inner, depth);
                    i = start + len + 1;
                }
                Some(&c) if is_name_start(c) => {
                    let start = i + 1;
                    let len = input[start..]
                        .bytes()
                        .take_while(|&b| is_name_char(b))
                        .count();
                    let name = &input[start..start + len];
                    self.substitute(name);
                    i = start + len;
                }
                _ => {
                    self.out.push('$');
                    i += 1;
                }
            }
        }
    }

    /// The content of `${...}`: `NAME` or `NAME:-default`.
    fn braced(&mut self, inner: &str, depth: usize) {
        let (name, default) = match inner.find(":-") {
            Some(p) => (&inner[..p], Some(&inner[p + 2..])),
            None => (inner, None),
        };
        if !is_name(name) {
            // The text is not echoed: a mistyped reference may well be a pasted secret.
            self.errors.push(
                "invalid `${...}`: it must hold a variable name ([A-Za-z_][A-Za-z0-9_]*), \
                 optionally followed by `:-default` (write `$$` for a literal `$`)"
                    .to_string(),
            );
            return;
        }
        let Some(default) = default else {
            self.substitute(name);
            return;
        };
        match (self.env)(name) {
            Some(v) if !v.is_empty() => self.out.push_str(&v),
            _ if depth >= MAX_NESTING => self.errors.push(format!(
                "`${{VAR:-default}}` defaults are nested more than {MAX_NESTING} levels deep"
            )),
            _ => self.expand_into(default, depth + 1),
        }
    }
}

fn unset(name: &str) -> String {
    format!(
        "environment variable {name} is not set (set it, or give a default: \
         ${{{name}:-default}}; write $$ for a literal $)"
    )
}

/// Length of the text before the `}` closing an already-opened `${`, allowing nested `${...}`
/// in a default.
fn matching_brace(s: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'$' if bytes.get(i + 1) == Some(&b'{') => {
                depth += 1;
                i += 2;
                continue;
            }
            b'}' if depth == 0 => return Some(i),
            b'}' => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    None
}

fn is_name_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_'
}

fn is_name_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

fn is_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty() && is_name_start(b[0]) && b.iter().all(|&c| is_name_char(c))
}
