//! SigV4 for Bedrock requests, with AWS's own signer (`aws-sigv4`): the final body bytes, every
//! header the request carries but `connection` (as the SDKs do), the canonical URI encoded once
//! more than the wire path (the crate's default). Returns the headers to add; the secret never
//! leaves this module and the `authorization` value is marked sensitive.

use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use http::HeaderValue;

pub use crate::config::AwsCredential;
#[cfg(test)]
use crate::config::Secret;

#[derive(Debug, thiserror::Error)]
#[error("signing the Bedrock request failed: {0}")]
pub struct SignError(String);

/// What to sign.
pub struct ToSign<'a> {
    pub method: &'a str,
    /// The absolute URL as sent (`https://host/path?query`).
    pub url: &'a str,
    pub headers: &'a [(&'a str, &'a str)],
    pub body: &'a [u8],
}

/// The headers SigV4 adds (`x-amz-date`, `authorization`, and `x-amz-security-token` with a
/// session token), names lower-case.
pub fn signature_headers(
    request: &ToSign<'_>,
    credential: &AwsCredential,
    region: &str,
    service: &str,
    time: SystemTime,
) -> Result<Vec<(&'static str, HeaderValue)>, SignError> {
    let identity: Identity = Credentials::new(
        credential.access_key_id.clone(),
        credential.secret_access_key.expose().to_owned(),
        credential
            .session_token
            .as_ref()
            .map(|t| t.expose().to_owned()),
        None,
        "cc-relay",
    )
    .into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| SignError(e.to_string()))?
        .into();
    let headers = request
        .headers
        .iter()
        .filter(|(name, _)| !name.eq_ignore_ascii_case("connection"))
        .map(|&(n, v)| (n, v));
    let signable = SignableRequest::new(
        request.method,
        request.url,
        headers,
        SignableBody::Bytes(request.body),
    )
    .map_err(|e| SignError(e.to_string()))?;
    let (instructions, _) = sign(signable, &params)
        .map_err(|e| SignError(e.to_string()))?
        .into_parts();
    let (headers, _) = instructions.into_parts();
    headers
        .into_iter()
        .map(|h| {
            let mut value =
                HeaderValue::from_str(h.value()).map_err(|e| SignError(e.to_string()))?;
            value.set_sensitive(h.sensitive() || h.name() == "authorization");
            Ok((h.name(), value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    /// AWS's published SigV4 suite (aws-signing-test-suite/v4 in smithy-rs): the example
    /// credential at 2015-08-30T12:36:00Z, region us-east-1, service `service`.
    fn example(token: Option<&str>) -> AwsCredential {
        AwsCredential {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: Secret::new("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
            session_token: token.map(Secret::new),
        }
    }

    fn signed(method: &str, token: Option<&str>) -> Vec<(&'static str, String)> {
        let time = UNIX_EPOCH + Duration::from_secs(1_440_938_160);
        let request = ToSign {
            method,
            url: "https://example.amazonaws.com/",
            headers: &[("host", "example.amazonaws.com")],
            body: b"",
        };
        signature_headers(&request, &example(token), "us-east-1", "service", time)
            .unwrap()
            .into_iter()
            .map(|(n, v)| (n, v.to_str().unwrap().to_owned()))
            .collect()
    }

    fn authorization<'a>(headers: &'a [(&'static str, String)]) -> &'a str {
        &headers
            .iter()
            .find(|(n, _)| *n == "authorization")
            .unwrap()
            .1
    }

    #[test]
    fn the_published_vectors_get_vanilla_post_vanilla_and_a_session_token() {
        let get = signed("GET", None);
        assert_eq!(
            authorization(&get),
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=host;x-amz-date, \
             Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
        assert!(get.contains(&("x-amz-date", "20150830T123600Z".to_owned())));
        assert_eq!(
            authorization(&signed("POST", None)),
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=host;x-amz-date, \
             Signature=5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b"
        );
        let token = "6e86291e8372ff2a2260956d9b8aae1d763fbf315fa00fa31553b73ebf194267";
        let with_token = signed("GET", Some(token));
        assert_eq!(
            authorization(&with_token),
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=host;x-amz-date;x-amz-security-token, \
             Signature=07ec1639c89043aa0e3e2de82b96708f198cceab042d4a97044c66dd9f74e7f8"
        );
        assert!(with_token.contains(&("x-amz-security-token", token.to_owned())));
    }
}
