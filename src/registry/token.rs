//! Answering a registry's 401: its challenge, then basic credentials or a bearer token
//! from the challenge's realm for the request's scope.

use ureq::http;

use crate::error::{Error, Result};

use super::auth::{Credential, basic_header, parse_challenges};
use super::client::{Client, Endpoint, Target, network_error};
use super::headers::percent_encode;

impl Client {
    pub(super) fn cred_source_hint(&self, host: &str) -> String {
        match self.credentials.lookup(host) {
            Ok(Some(_)) => " found for it".to_owned(),
            _ => format!(": none in config.json for {host}"),
        }
    }

    /// Answers a 401's challenge: the `Authorization` value to send from now on.
    pub(super) fn authenticate(
        &self,
        t: &Target<'_>,
        ep: &Endpoint,
        header: &str,
        scope: &str,
    ) -> Result<String> {
        let unauthorized = |why: String| Error::Unauthorized(format!("{}: {why}", t.describe()));
        if header.is_empty() {
            return Err(unauthorized(
                "HTTP 401 without a WWW-Authenticate challenge".into(),
            ));
        }
        let challenges = parse_challenges(header)?;
        let credential = self.credentials.lookup(&ep.cred_host)?;
        if let Some(bearer) = challenges.iter().find(|c| c.scheme == "bearer") {
            let realm = bearer
                .params
                .get("realm")
                .ok_or_else(|| unauthorized("Bearer challenge without a realm".into()))?;
            return self.fetch_token(
                t,
                ep,
                realm,
                bearer.params.get("service"),
                scope,
                credential,
            );
        }
        if challenges.iter().any(|c| c.scheme == "basic") {
            return match credential {
                Some(Credential::Basic { username, password }) => {
                    Ok(basic_header(&username, &password))
                }
                Some(Credential::IdentityToken(_)) => Err(unauthorized(
                    "the registry asks for basic auth; config.json holds only an identity token"
                        .into(),
                )),
                None => Err(unauthorized(format!(
                    "authentication required (HTTP 401): no credentials in config.json for {}",
                    ep.cred_host
                ))),
            };
        }
        Err(unauthorized(format!(
            "unsupported authentication scheme {:?}",
            challenges[0].scheme
        )))
    }

    /// Fetches a bearer token from `realm` for `scope`.
    fn fetch_token(
        &self,
        t: &Target<'_>,
        ep: &Endpoint,
        realm: &str,
        service: Option<&String>,
        scope: &str,
        credential: Option<Credential>,
    ) -> Result<String> {
        let enc = |s: &str| percent_encode(s);
        let mut query = scope
            .split(' ')
            .map(|one| format!("scope={}", enc(one)))
            .collect::<Vec<_>>()
            .join("&");
        if let Some(s) = service {
            query.push_str(&format!("&service={}", enc(s)));
        }
        let sep = if realm.contains('?') { '&' } else { '?' };
        let result = match &credential {
            Some(Credential::IdentityToken(token)) => {
                let form = format!(
                    "grant_type=refresh_token&refresh_token={}&client_id=ocistore&{query}",
                    enc(token)
                );
                let req = http::Request::post(realm)
                    .header("Content-Type", "application/x-www-form-urlencoded")
                    .body(form.into_bytes());
                req.map(|r| ep.agent.run(r))
            }
            other => {
                let mut req = http::Request::get(format!("{realm}{sep}{query}"));
                if let Some(Credential::Basic { username, password }) = other {
                    req = req.header("Authorization", basic_header(username, password));
                }
                req.body(()).map(|r| ep.agent.run(r))
            }
        }
        .map_err(|e| Error::InvalidArgument(format!("token realm {realm:?}: {e}")))?;
        let mut resp = result.map_err(|e| network_error(t, &e, 1))?;
        let status = resp.status().as_u16();
        if matches!(status, 408 | 429 | 500 | 502 | 503 | 504) {
            return Err(Error::Unavailable(format!(
                "{}: the token server {realm} answered HTTP {status}; try again later",
                t.describe()
            )));
        }
        if status != 200 {
            let hint = if credential.is_none() {
                format!(" (no credentials in config.json for {})", ep.cred_host)
            } else {
                String::new()
            };
            return Err(Error::Unauthorized(format!(
                "{}: the token server {realm} answered HTTP {status}{hint}",
                t.describe()
            )));
        }
        let text = resp
            .body_mut()
            .with_config()
            .limit(1 << 20)
            .read_to_string()
            .map_err(|e| network_error(t, &e, 1))?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
            Error::Unauthorized(format!(
                "{}: token server answered non-JSON: {e}",
                t.describe()
            ))
        })?;
        let token = v
            .get("token")
            .or_else(|| v.get("access_token"))
            .and_then(|t| t.as_str())
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                Error::Unauthorized(format!("{}: the token server sent no token", t.describe()))
            })?;
        Ok(format!("Bearer {token}"))
    }
}

/// The token scope of `t`: space-separated scopes; a mount also needs pull on its source
/// repository.
pub(super) fn scope(t: &Target<'_>) -> String {
    let mut scope = format!("repository:{}:{}", t.repository, t.actions);
    if let Some(from) = t.also_pull {
        scope.push_str(&format!(" repository:{from}:pull"));
    }
    scope
}
