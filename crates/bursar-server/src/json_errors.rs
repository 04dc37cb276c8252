//! JSON bodies parsed with messages in plain words: serde's errors name Rust
//! types (`invalid type: floating point 10.5, expected u64`); these name the
//! field and say what it must be (`amount must be an integer number of minor
//! units, not 10.5`).

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::error::Category;

/// Parses `bytes` as a `T` (which may borrow from them), or says in plain
/// words what is wrong and where.
pub fn from_slice<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, String> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer)
        .map_err(|error| describe(&error.path().to_string(), error.inner()))?;
    deserializer.end().map_err(|error| describe(".", &error))?;
    Ok(value)
}

/// Parses `raw`, a JSON value already checked whole (an operation's body
/// within a batch), as a `T`, or says in plain words what is wrong; `prefix`
/// names the value's place.
pub fn from_raw<T: DeserializeOwned>(raw: &str, prefix: &str) -> Result<T, String> {
    let mut deserializer = serde_json::Deserializer::from_str(raw);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let place = if path == "." {
            prefix.to_owned()
        } else {
            format!("{prefix}.{path}")
        };
        describe_data(&place, &message_of(error.inner()))
    })
}

/// serde_json's message without its ` at line L column C` suffix.
fn message_of(error: &serde_json::Error) -> String {
    let text = error.to_string();
    match text.rfind(" at line ") {
        Some(at) => text[..at].to_owned(),
        None => text,
    }
}

/// An error at `path` (`.` for the whole body) in plain words.
fn describe(path: &str, error: &serde_json::Error) -> String {
    let message = message_of(error);
    match error.classify() {
        Category::Data => {
            let place = if path == "." { "the body" } else { path };
            describe_data(place, &message)
        }
        Category::Eof => format!(
            "the body is not complete JSON: it ends at line {}, column {} before the value does",
            error.line(),
            error.column()
        ),
        Category::Syntax | Category::Io => {
            let what = match message.as_str() {
                "trailing characters" => "there is more after the JSON value".to_owned(),
                "recursion limit exceeded" => "it is nested too deeply".to_owned(),
                "expected value" => "a value was expected".to_owned(),
                other => other.to_owned(),
            };
            format!(
                "the body is not valid JSON: {what} (line {}, column {})",
                error.line(),
                error.column()
            )
        }
    }
}

/// A data error at `place` (a field path such as `amount` or
/// `operations[3].body.reason`, or "the body") in plain words.
fn describe_data(place: &str, message: &str) -> String {
    if let Some(rest) = message
        .strip_prefix("invalid type: ")
        .or_else(|| message.strip_prefix("invalid value: "))
        && let Some((got, expected)) = rest.split_once(", expected ")
    {
        return format!(
            "{place} must be {}, not {}",
            plain_expected(expected),
            plain_got(got)
        );
    }
    if let Some(rest) = message.strip_prefix("missing field ") {
        let field = rest.trim_matches('`');
        return if place == "the body" {
            format!("{field} is required")
        } else {
            format!("{place}.{field} is required")
        };
    }
    if let Some(rest) = message.strip_prefix("unknown field ") {
        let (field, known) = rest.split_once(", ").unwrap_or((rest, ""));
        let field = field.trim_matches('`');
        let known = if let Some(list) = known
            .strip_prefix("expected one of ")
            .or_else(|| known.strip_prefix("expected "))
        {
            let list = plain_list(list);
            if list.contains(',') {
                format!("; the fields are {list}")
            } else {
                format!("; the only field is {list}")
            }
        } else if known == "there are no fields" {
            "; this body takes no fields".to_owned()
        } else {
            String::new()
        };
        // The path ends in the unknown field itself; name the object around it.
        let within = match place.rsplit_once('.') {
            Some((parent, _)) => format!(" in {parent}"),
            None => String::new(),
        };
        return format!("unknown field {field:?}{within}{known}");
    }
    if let Some(rest) = message.strip_prefix("duplicate field ") {
        return format!("the field {} appears twice", rest.trim_matches('`'));
    }
    if let Some(rest) = message.strip_prefix("unknown variant ")
        && let Some((got, known)) = rest.split_once(", expected ")
    {
        let known = known.strip_prefix("one of ").unwrap_or(known);
        return format!(
            "{place} must be one of {}, not {:?}",
            plain_list(known),
            got.trim_matches('`')
        );
    }
    if let Some(rest) = message.strip_prefix("invalid length ")
        && let Some((length, expected)) = rest.split_once(", expected ")
    {
        // serde reads a struct from an array too; an array of the wrong
        // length is what a client sending an array instead of an object sees.
        if expected.starts_with("struct ") {
            return format!("{place} must be a JSON object, not an array");
        }
        return format!(
            "{place} must be {}, not of length {length}",
            plain_expected(expected)
        );
    }
    // The domain's own messages (`amount must be an integer from 1 to …`)
    // already name their field.
    let field = place.rsplit(['.', ']']).next().unwrap_or(place);
    if message.starts_with(field) || message.starts_with(place) {
        message.to_owned()
    } else {
        format!("{place}: {message}")
    }
}

/// `` `a`, `b` or `c` `` as `a, b, c`.
fn plain_list(list: &str) -> String {
    list.replace(" or ", ", ").replace('`', "")
}

/// What serde says it expected, without Rust's type names.
fn plain_expected(expected: &str) -> String {
    match expected {
        "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => "a whole number, 0 or more".to_owned(),
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "a whole number".to_owned(),
        "a boolean" | "a string" | "a sequence" => expected.replace("a sequence", "an array"),
        "unit" => "null".to_owned(),
        other
            if other.starts_with("struct ")
                || other.starts_with("internally tagged enum")
                || other.starts_with("a map") =>
        {
            "a JSON object".to_owned()
        }
        other if other.starts_with("enum ") || other.starts_with("variant identifier") => {
            "one of the names listed in the API".to_owned()
        }
        other if other.starts_with("tuple") || other.starts_with("a sequence") => {
            "an array".to_owned()
        }
        other => other.replace('`', ""),
    }
}

/// What serde says it got, as the JSON it was.
fn plain_got(got: &str) -> String {
    let unquoted = |text: &str| text.trim_matches('`').to_owned();
    if let Some(value) = got.strip_prefix("floating point ") {
        return unquoted(value);
    }
    if let Some(value) = got.strip_prefix("integer ") {
        return unquoted(value);
    }
    if let Some(value) = got.strip_prefix("boolean ") {
        return unquoted(value);
    }
    if let Some(value) = got.strip_prefix("string ") {
        return format!("the string {value}");
    }
    match got {
        "map" => "an object".to_owned(),
        "sequence" => "an array".to_owned(),
        "unit value" | "null" => "null".to_owned(),
        other => other.replace('`', ""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        amount: bursar_core::Amount,
        reason: Option<String>,
    }

    fn message(json: &str) -> String {
        from_slice::<Body>(json.as_bytes()).expect_err(json)
    }

    #[test]
    fn messages_are_plain() {
        assert_eq!(
            message(r#"{"amount":10.5}"#),
            "amount must be an integer number of minor units, not 10.5"
        );
        assert_eq!(
            message(r#"{"amount":"10"}"#),
            "amount must be an integer number of minor units, not the string \"10\""
        );
        assert_eq!(message(r#"{"reason":"x"}"#), "amount is required");
        assert_eq!(
            message(r#"{"amount":1,"tip":1}"#),
            "unknown field \"tip\"; the fields are amount, reason"
        );
        assert_eq!(
            message(r#"{"amount":1,"reason":5}"#),
            "reason must be a string, not 5"
        );
        assert!(
            message(r#"{"amount":0}"#)
                .starts_with("amount must be an integer from 1 to 1,000,000,000,000")
        );
        assert!(message(r#"{"amount":"#).starts_with("the body is not complete JSON"));
        assert!(message(r#"{"amount":1} x"#).contains("there is more after the JSON value"));
        assert_eq!(
            message("[1]"),
            "the body must be a JSON object, not an array"
        );
        for json in [
            r#"{"amount":10.5}"#,
            r#"{"amount":true}"#,
            r#"{"amount":null}"#,
            r#"{"amount":18446744073709551616}"#,
            r#"{"amount":-5}"#,
            "null",
        ] {
            let text = message(json);
            for rust in ["u64", "i64", "struct", "invalid type", "`"] {
                assert!(!text.contains(rust), "{json}: {text}");
            }
        }
    }
}
