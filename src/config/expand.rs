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
    if !input.contains('$') {
        return Ok(input.to_string());
    }
    let mut out = String::with_capacity(input.len());
    let mut errors = Vec::new();
    expand_into(input, env, &mut out, &mut errors);
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

fn expand_into(input: &str, env: Env<'_>, out: &mut String, errors: &mut Vec<String>) {
    let bytes = input.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let Some(offset) = input[i..].find('$') else {
            out.push_str(&input[i..]);
            break;
        };
        out.push_str(&input[i..i + offset]);
        i += offset;
        // `i` is at a `$`.
        match bytes.get(i + 1) {
            Some(b'$') => {
                out.push('$');
                i += 2;
            }
            Some(b'{') => {
                let start = i + 2;
                let Some(len) = matching_brace(&input[start..]) else {
                    errors.push("unterminated `${` (write `$$` for a literal `$`)".to_string());
                    return;
                };
                let inner = &input[start..start + len];
                braced(inner, env, out, errors);
                i = start + len + 1;
            }
            Some(&c) if is_name_start(c) => {
                let start = i + 1;
                let len = input[start..]
                    .bytes()
                    .take_while(|&b| is_name_char(b))
                    .count();
                let name = &input[start..start + len];
                match env(name) {
                    Some(v) => out.push_str(&v),
                    None => errors.push(unset(name)),
                }
                i = start + len;
            }
            _ => {
                out.push('$');
                i += 1;
            }
        }
    }
}

/// The content of `${...}`: `NAME` or `NAME:-default`.
fn braced(inner: &str, env: Env<'_>, out: &mut String, errors: &mut Vec<String>) {
    let (name, default) = match inner.find(":-") {
        Some(p) => (&inner[..p], Some(&inner[p + 2..])),
        None => (inner, None),
    };
    if !is_name(name) {
        // The text is not echoed: a mistyped reference may well be a pasted secret.
        errors.push(
            "invalid `${...}`: it must hold a variable name ([A-Za-z_][A-Za-z0-9_]*), \
             optionally followed by `:-default` (write `$$` for a literal `$`)"
                .to_string(),
        );
        return;
    }
    match (env(name), default) {
        (Some(v), Some(_)) if !v.is_empty() => out.push_str(&v),
        (Some(v), None) => out.push_str(&v),
        (_, Some(d)) => expand_into(d, env, out, errors),
        (None, None) => errors.push(unset(name)),
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
