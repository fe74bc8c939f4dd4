//! Fault bookkeeping (one-shot FIFO and sticky per key) and Anthropic error bodies.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use bytes::Bytes;

use super::{lock, Fault};

#[derive(Default)]
pub(super) struct FaultBook {
    /// Number of armed faults; lets the hot path skip the mutex when there are none.
    armed: AtomicUsize,
    inner: Mutex<FaultState>,
}

#[derive(Default)]
struct FaultState {
    one_shot: VecDeque<(Option<String>, Fault)>,
    sticky: HashMap<String, Fault>,
}

impl FaultState {
    fn len(&self) -> usize {
        self.one_shot.len() + self.sticky.len()
    }
}

impl FaultBook {
    pub(super) fn push(&self, key: Option<&str>, fault: Fault) {
        let mut st = lock(&self.inner);
        st.one_shot.push_back((key.map(str::to_owned), fault));
        self.armed.store(st.len(), Ordering::Release);
    }

    pub(super) fn set_sticky(&self, key: &str, fault: Option<Fault>) {
        let mut st = lock(&self.inner);
        match fault {
            Some(f) => {
                st.sticky.insert(key.to_owned(), f);
            }
            None => {
                st.sticky.remove(key);
            }
        }
        self.armed.store(st.len(), Ordering::Release);
    }

    pub(super) fn clear(&self) {
        let mut st = lock(&self.inner);
        st.one_shot.clear();
        st.sticky.clear();
        self.armed.store(0, Ordering::Release);
    }

    /// The fault for a request with this credential: the first matching one-shot (consumed),
    /// else the key's sticky fault.
    pub(super) fn take(&self, key: Option<&str>) -> Option<Fault> {
        if self.armed.load(Ordering::Acquire) == 0 {
            return None;
        }
        let mut st = lock(&self.inner);
        let pos = st
            .one_shot
            .iter()
            .position(|(k, _)| k.is_none() || k.as_deref() == key);
        let fault = match pos {
            Some(i) => st.one_shot.remove(i).map(|(_, f)| f),
            None => key.and_then(|k| st.sticky.get(k).cloned()),
        };
        self.armed.store(st.len(), Ordering::Release);
        fault
    }
}

/// Anthropic's error type for a status (unknown statuses are `api_error`, as 5xx are).
pub(super) fn error_type(status: u16) -> &'static str {
    match status {
        400 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        _ => "api_error",
    }
}

fn default_message(status: u16) -> &'static str {
    match status {
        400 => "mock: invalid request",
        401 => "invalid x-api-key",
        403 => "mock: permission denied",
        404 => "Not found",
        413 => "Request exceeds the maximum allowed number of bytes.",
        429 => "This request would exceed the rate limit for your organization.",
        529 => "Overloaded",
        _ => "Internal server error",
    }
}

/// `{"type":"error","error":{"type":..,"message":..},"request_id":..}` as Anthropic sends it.
pub(super) fn error_body(status: u16, message: Option<&str>, request_id: &str) -> Bytes {
    let body = serde_json::json!({
        "type": "error",
        "error": {
            "type": error_type(status),
            "message": message.unwrap_or_else(|| default_message(status)),
        },
        "request_id": request_id,
    });
    Bytes::from(body.to_string())
}

/// An error as Azure's front door shapes it: `{"error":{"code","message"}}`.
pub(super) fn azure_error_body(status: u16, message: Option<&str>) -> Bytes {
    let body = serde_json::json!({
        "error": {
            "code": status.to_string(),
            "message": message.unwrap_or_else(|| default_message(status)),
        },
    });
    Bytes::from(body.to_string())
}
