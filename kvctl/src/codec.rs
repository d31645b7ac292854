//! How bytes cross the command line: arguments decoded from text, hex or base64; output as
//! escaped text or JSON.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

/// How KEY, VALUE and bound arguments are written on the command line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Input {
    /// The argument's bytes as they are.
    #[default]
    Raw,
    /// Hexadecimal, two digits a byte.
    Hex,
    /// Standard base64 with padding.
    Base64,
}

impl Input {
    /// Decodes one argument; `what` names it in the error ("key", "value", ...).
    pub fn decode(self, what: &str, arg: &OsStr) -> Result<Vec<u8>, String> {
        let bytes = arg.as_bytes();
        match self {
            Input::Raw => Ok(bytes.to_vec()),
            Input::Hex => decode_hex(bytes).ok_or_else(|| {
                format!(
                    "the {what} is not valid hex (two digits 0-9a-f per byte): {}",
                    escape(bytes)
                )
            }),
            Input::Base64 => BASE64
                .decode(bytes)
                .map_err(|e| format!("the {what} is not valid base64 ({e}): {}", escape(bytes))),
        }
    }
}

fn decode_hex(text: &[u8]) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16);
    text.chunks(2)
        .map(|pair| Some((digit(pair[0])? * 16 + digit(pair[1])?) as u8))
        .collect()
}

/// Escapes bytes reversibly for a line of text: printable ASCII as is; `\t`, `\n`, `\r`, `\\`,
/// `\'`, `\"`; `\xNN` for everything else.
pub fn escape(bytes: &[u8]) -> String {
    bytes.escape_ascii().to_string()
}

/// Base64 of `bytes` (standard alphabet, padded).
pub fn base64(bytes: &[u8]) -> String {
    BASE64.encode(bytes)
}

/// Decodes base64 (standard alphabet, padded).
pub fn unbase64(text: &str) -> Option<Vec<u8>> {
    BASE64.decode(text).ok()
}

/// Adds `bytes` to a JSON object under `name` if they are UTF-8, else under `<name>_base64`.
/// Lossless either way.
pub fn json_bytes(
    object: &mut serde_json::Map<String, serde_json::Value>,
    name: &str,
    bytes: &[u8],
) {
    match std::str::from_utf8(bytes) {
        Ok(text) => object.insert(name.to_string(), text.into()),
        Err(_) => object.insert(format!("{name}_base64"), base64(bytes).into()),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_and_base64_arguments_decode_or_fail_clearly() {
        assert_eq!(
            Input::Hex.decode("key", OsStr::new("00ff10")),
            Ok(vec![0, 255, 16])
        );
        assert!(Input::Hex.decode("key", OsStr::new("0g")).is_err());
        assert!(Input::Hex.decode("key", OsStr::new("abc")).is_err());
        assert_eq!(
            Input::Base64.decode("key", OsStr::new("AP8=")),
            Ok(vec![0, 255])
        );
        let err = Input::Base64.decode("value", OsStr::new("**"));
        assert!(err.is_err_and(|e| e.contains("value")));
    }
}
