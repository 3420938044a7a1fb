//! A key's fields as the admin API and My keys take them: each checked, a 400 naming
//! the field otherwise; the same for create and update.

use parlance_core::Error;
use parlance_tenancy::keys::{self, parse_duration_ms, KeyRecord};
use serde_json::{Map, Value};

/// Latest expiry accepted: the year 9999, so milliseconds never overflow.
const LAST_EXPIRY_S: i64 = 253_402_300_799;

/// `expires_at` as Unix seconds, or `expires_in` as `30d` / `12h`.
fn expiry(body: &Map<String, Value>) -> Result<Option<Option<i64>>, Error> {
    if let Some(v) = body.get("expires_in") {
        let text = v.as_str().unwrap_or_default();
        let at = parse_duration_ms(text)
            .filter(|&ms| ms > 0)
            .and_then(|ms| keys::now_ms().checked_add(ms))
            .filter(|&at| at <= LAST_EXPIRY_S * 1000)
            .ok_or_else(|| {
                Error::invalid_param(
                    "expires_in",
                    "'expires_in' must look like 30d, 12h, 45m or 3600s, and end before the year 10000.",
                )
            })?;
        return Ok(Some(Some(at)));
    }
    match body.get("expires_at") {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(None)),
        Some(v) => v
            .as_i64()
            .filter(|s| (1..=LAST_EXPIRY_S).contains(s))
            .map(|s| Some(Some(s * 1000)))
            .ok_or_else(|| {
                Error::invalid_param(
                    "expires_at",
                    "'expires_at' must be Unix seconds before the year 10000.",
                )
            }),
    }
}

/// Text that the store can keep (Postgres refuses NUL) and a person can read.
fn text_field(v: &Value, name: &str) -> Result<String, Error> {
    v.as_str()
        .filter(|s| !s.trim().is_empty() && s.len() <= 256 && !s.contains('\0'))
        .map(str::to_string)
        .ok_or_else(|| {
            Error::invalid_param(
                name,
                format!("'{name}' must be a non-empty string of at most 256 bytes, without NUL."),
            )
        })
}

/// Sets the fields `obj` names on `k`, each checked; the same for create and update.
pub(crate) fn apply_fields(k: &mut KeyRecord, obj: &Map<String, Value>) -> Result<(), Error> {
    if let Some(e) = expiry(obj)? {
        k.expires_at = e;
    }
    for (name, v) in obj {
        match name.as_str() {
            "name" => k.name = text_field(v, "name")?,
            "models" => {
                let list = v.as_array().ok_or_else(|| {
                    Error::invalid_param("models", "'models' must be a list of model names.")
                })?;
                k.models = list
                    .iter()
                    .map(|m| text_field(m, "models"))
                    .collect::<Result<_, _>>()?;
            }
            "rpm" => k.rpm = opt_u32(v, "rpm")?,
            "tpm" => k.tpm = opt_u32(v, "tpm")?,
            "max_concurrent" => k.max_concurrent = opt_u32(v, "max_concurrent")?,
            "budget_tokens" => {
                k.budget_tokens = match v {
                    Value::Null => None,
                    // The store keeps a signed 64-bit number.
                    v => Some(
                        v.as_u64()
                            .filter(|&n| i64::try_from(n).is_ok())
                            .ok_or_else(|| {
                                Error::invalid_param(
                                    "budget_tokens",
                                    "'budget_tokens' must be a whole number below 2^63, or null.",
                                )
                            })?,
                    ),
                }
            }
            "budget_usd" => {
                k.budget_usd = match v {
                    Value::Null => None,
                    v => Some(
                        v.as_f64()
                            .filter(|x| x.is_finite() && *x >= 0.0)
                            .ok_or_else(|| {
                                Error::invalid_param(
                                    "budget_usd",
                                    "'budget_usd' must be a number of dollars, 0 or more, or null.",
                                )
                            })?,
                    ),
                }
            }
            "metadata" => {
                k.metadata = v.as_object().cloned().ok_or_else(|| {
                    Error::invalid_param("metadata", "'metadata' must be an object.")
                })?
            }
            "expires_at" | "expires_in" => {}
            other => {
                return Err(Error::invalid_param(
                    other,
                    format!("Unknown key field '{other}'."),
                ))
            }
        }
    }
    Ok(())
}

fn opt_u32(v: &Value, name: &str) -> Result<Option<u32>, Error> {
    match v {
        Value::Null => Ok(None),
        v => v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| {
                Error::invalid_param(name, format!("'{name}' must be a whole number or null."))
            }),
    }
}
