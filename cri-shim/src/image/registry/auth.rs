//! Registry authentication: the credentials a CRI `AuthConfig` carries, the
//! `WWW-Authenticate` challenges a registry answers with, and the token a
//! Bearer challenge is met with.
//!
//! The flow is the Docker Registry HTTP API v2 one: a request without (or
//! with stale) authorization gets `401` and a challenge; a `Basic` challenge
//! is met with the credentials themselves, a `Bearer` challenge with a token
//! fetched from the challenge's `realm` (GET with Basic credentials, or the
//! OAuth2 `refresh_token` POST when only an identity token is given), after
//! which the request is sent once more.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use k8s_cri::v1::AuthConfig;

/// What a pull authenticates with, read from a CRI `AuthConfig`.
#[derive(Clone, PartialEq, Eq, Default)]
pub enum Credentials {
    /// Nothing: anonymous access (and anonymous tokens).
    #[default]
    Anonymous,
    /// User name and password (or `auth`, decoded).
    Basic {
        /// User name.
        username: String,
        /// Password.
        password: String,
    },
    /// An OAuth2 refresh token for the token server (`identity_token`).
    IdentityToken(String),
    /// A bearer token sent to the registry as is (`registry_token`).
    RegistryToken(String),
}

/// Never print secrets.
impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Anonymous => f.write_str("Anonymous"),
            Self::Basic { username, .. } => write!(f, "Basic({username:?}, <redacted>)"),
            Self::IdentityToken(_) => f.write_str("IdentityToken(<redacted>)"),
            Self::RegistryToken(_) => f.write_str("RegistryToken(<redacted>)"),
        }
    }
}

/// An `AuthConfig.auth` that is not base64 of `user:password`.
#[derive(Debug, thiserror::Error)]
#[error("invalid auth config for {host}: `auth` is not base64 of \"username:password\"")]
pub struct InvalidAuthError {
    /// The registry the credentials were for.
    pub host: String,
}

impl Credentials {
    /// Reads the CRI credentials for `domain` (the reference's registry), in
    /// containerd's order: username/password, identity token, `auth`, then a
    /// registry token. Credentials whose `server_address` names another
    /// registry are not sent: they are not meant for this one.
    pub fn from_auth_config(
        auth: Option<&AuthConfig>,
        domain: &str,
    ) -> Result<Self, InvalidAuthError> {
        let Some(auth) = auth else {
            return Ok(Self::Anonymous);
        };
        if !auth.server_address.is_empty() && !same_registry(&auth.server_address, domain) {
            return Ok(Self::Anonymous);
        }
        if !auth.username.is_empty() {
            return Ok(Self::Basic {
                username: auth.username.clone(),
                password: auth.password.clone(),
            });
        }
        if !auth.identity_token.is_empty() {
            return Ok(Self::IdentityToken(auth.identity_token.clone()));
        }
        if !auth.auth.is_empty() {
            let invalid = || InvalidAuthError {
                host: domain.to_owned(),
            };
            let decoded = BASE64.decode(auth.auth.trim()).map_err(|_| invalid())?;
            let decoded = String::from_utf8(decoded).map_err(|_| invalid())?;
            let (username, password) = decoded.split_once(':').ok_or_else(invalid)?;
            return Ok(Self::Basic {
                username: username.to_owned(),
                password: password.trim_end_matches('\0').to_owned(),
            });
        }
        if !auth.registry_token.is_empty() {
            return Ok(Self::RegistryToken(auth.registry_token.clone()));
        }
        Ok(Self::Anonymous)
    }

    /// `Basic <base64(user:password)>`, for Basic credentials.
    pub fn basic_header(&self) -> Option<String> {
        match self {
            Self::Basic { username, password } => Some(format!(
                "Basic {}",
                BASE64.encode(format!("{username}:{password}"))
            )),
            _ => None,
        }
    }
}

/// Whether a `server_address` (`https://index.docker.io/v1/`, `host:port`,
/// `host:port/path`) names the registry `domain` of a reference.
fn same_registry(server_address: &str, domain: &str) -> bool {
    let host = server_address
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let host = host.split('/').next().unwrap_or(host);
    let canonical = |h: &str| -> String {
        match h {
            "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
                "docker.io".to_owned()
            }
            other => other.to_ascii_lowercase(),
        }
    };
    canonical(host) == canonical(domain)
}

/// An authentication scheme a registry asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// `Basic realm="..."`: send the credentials with every request.
    Basic,
    /// `Bearer realm="...",service="...",scope="..."`: fetch a token.
    Bearer {
        /// Token server URL.
        realm: String,
        /// `service` parameter, if given.
        service: Option<String>,
        /// `scope` parameter, if given.
        scope: Option<String>,
    },
}

/// Parses the values of `WWW-Authenticate` headers into the challenges this
/// client can answer (Basic and Bearer), in the order given. Unknown schemes
/// and Bearer challenges without a realm are skipped.
pub fn parse_challenges<'a>(headers: impl IntoIterator<Item = &'a str>) -> Vec<Challenge> {
    let mut challenges = Vec::new();
    for header in headers {
        for (scheme, params) in split_challenges(header) {
            let param = |name: &str| {
                params
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v.clone())
            };
            if scheme.eq_ignore_ascii_case("basic") {
                challenges.push(Challenge::Basic);
            } else if scheme.eq_ignore_ascii_case("bearer")
                && let Some(realm) = param("realm")
            {
                challenges.push(Challenge::Bearer {
                    realm,
                    service: param("service"),
                    scope: param("scope"),
                });
            }
        }
    }
    challenges
}

/// Splits one header value into `(scheme, params)` challenges (RFC 7235):
/// `Scheme k=v, k="quoted, \"v\"", Other k=v`. A token followed by `=` is a
/// parameter; a token followed by anything else starts a new challenge.
fn split_challenges(header: &str) -> Vec<(String, Vec<(String, String)>)> {
    let mut lexer = Lexer {
        rest: header.as_bytes(),
    };
    let mut challenges: Vec<(String, Vec<(String, String)>)> = Vec::new();
    loop {
        lexer.skip(|b| b == b' ' || b == b'\t' || b == b',');
        let token = lexer.token();
        if token.is_empty() {
            // Garbage or the end: whatever was parsed stands.
            break;
        }
        lexer.skip(|b| b == b' ' || b == b'\t');
        if lexer.peek() == Some(b'=') && !challenges.is_empty() {
            lexer.rest = &lexer.rest[1..];
            lexer.skip(|b| b == b' ' || b == b'\t');
            let value = if lexer.peek() == Some(b'"') {
                lexer.quoted()
            } else {
                lexer.token()
            };
            if let Some((_, params)) = challenges.last_mut() {
                params.push((token, value));
            }
        } else {
            challenges.push((token, Vec::new()));
        }
    }
    challenges
}

struct Lexer<'a> {
    rest: &'a [u8],
}

impl Lexer<'_> {
    fn peek(&self) -> Option<u8> {
        self.rest.first().copied()
    }

    fn skip(&mut self, what: impl Fn(u8) -> bool) {
        while self.peek().is_some_and(&what) {
            self.rest = &self.rest[1..];
        }
    }

    /// An RFC 7230 token (also token68's `/+=` tail for robustness).
    fn token(&mut self) -> String {
        let is_token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~/:".contains(&b);
        let end = self
            .rest
            .iter()
            .position(|&b| !is_token(b))
            .unwrap_or(self.rest.len());
        let token = String::from_utf8_lossy(&self.rest[..end]).into_owned();
        self.rest = &self.rest[end..];
        token
    }

    /// A quoted string starting at `"`, with `\` escapes; unterminated runs to the end.
    fn quoted(&mut self) -> String {
        let mut out = Vec::new();
        let mut i = 1;
        while i < self.rest.len() {
            match self.rest[i] {
                b'\\' if i + 1 < self.rest.len() => {
                    out.push(self.rest[i + 1]);
                    i += 2;
                }
                b'"' => {
                    i += 1;
                    break;
                }
                b => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        self.rest = &self.rest[i.min(self.rest.len())..];
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// The JSON a token server answers with; Docker's `token` or OAuth2's
/// `access_token` (both are sent by most servers).
#[derive(Debug, serde::Deserialize)]
pub struct TokenResponse {
    #[serde(default)]
    token: String,
    #[serde(default)]
    access_token: String,
}

impl TokenResponse {
    /// The token, whichever field carried it.
    pub fn into_token(self) -> Option<String> {
        [self.token, self.access_token]
            .into_iter()
            .find(|t| !t.is_empty())
    }
}

/// The pull scope of a repository path (`library/busybox`).
pub fn pull_scope(path: &str) -> String {
    format!("repository:{path}:pull")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_docker_hub_bearer_challenge() {
        let header = r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#;
        assert_eq!(
            parse_challenges([header]),
            [Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/busybox:pull".into()),
            }]
        );
    }

    #[test]
    fn parses_several_challenges_quoting_and_case() {
        let header = r#"basic realm="Registry Realm", BEARER realm=https://t.example/token , service="a, \"b\"""#;
        assert_eq!(
            parse_challenges([header, "Negotiate", "Digest realm=\"x\""]),
            [
                Challenge::Basic,
                Challenge::Bearer {
                    realm: "https://t.example/token".into(),
                    service: Some(r#"a, "b""#.into()),
                    scope: None,
                },
            ]
        );
        assert_eq!(parse_challenges(["Bearer service=\"no realm\""]), []);
        assert_eq!(parse_challenges([""]), []);
        assert_eq!(
            parse_challenges([r#"Bearer realm="unterminated"#]),
            [Challenge::Bearer {
                realm: "unterminated".into(),
                service: None,
                scope: None
            }]
        );
    }

    fn auth(f: impl FnOnce(&mut AuthConfig)) -> AuthConfig {
        let mut config = AuthConfig::default();
        f(&mut config);
        config
    }

    #[test]
    fn credentials_follow_containerds_order() {
        let domain = "registry.example:5000";
        let read = |config: &AuthConfig| Credentials::from_auth_config(Some(config), domain);
        assert_eq!(
            Credentials::from_auth_config(None, domain).unwrap(),
            Credentials::Anonymous
        );
        assert_eq!(
            read(&auth(|_| {})).unwrap(),
            Credentials::Anonymous,
            "an empty AuthConfig is anonymous"
        );
        let basic = Credentials::Basic {
            username: "alice".into(),
            password: "s3cret:x".into(),
        };
        assert_eq!(
            read(&auth(|a| {
                a.username = "alice".into();
                a.password = "s3cret:x".into();
                a.identity_token = "ignored".into();
            }))
            .unwrap(),
            basic
        );
        assert_eq!(
            read(&auth(|a| a.auth = BASE64.encode("alice:s3cret:x"))).unwrap(),
            basic,
            "`auth` splits at the first colon"
        );
        assert_eq!(
            read(&auth(|a| {
                a.identity_token = "refresh".into();
                a.auth = BASE64.encode("alice:pw");
            }))
            .unwrap(),
            Credentials::IdentityToken("refresh".into())
        );
        assert_eq!(
            read(&auth(|a| a.registry_token = "tok".into())).unwrap(),
            Credentials::RegistryToken("tok".into())
        );
        assert!(read(&auth(|a| a.auth = "not base64!".into())).is_err());
        assert!(read(&auth(|a| a.auth = BASE64.encode("no colon"))).is_err());
        assert_eq!(
            basic.basic_header().unwrap(),
            format!("Basic {}", BASE64.encode("alice:s3cret:x"))
        );
        assert!(
            !format!("{basic:?}").contains("s3cret"),
            "Debug hides secrets"
        );
    }

    #[test]
    fn credentials_for_another_registry_are_not_sent() {
        let with_server = |server: &str| {
            auth(|a| {
                a.username = "u".into();
                a.server_address = server.into();
            })
        };
        for (server, domain, sent) in [
            ("registry.example:5000", "registry.example:5000", true),
            (
                "https://registry.example:5000/v2/",
                "registry.example:5000",
                true,
            ),
            ("other.example", "registry.example:5000", false),
            ("https://index.docker.io/v1/", "docker.io", true),
            ("registry-1.docker.io", "docker.io", true),
            ("quay.io", "docker.io", false),
        ] {
            let credentials =
                Credentials::from_auth_config(Some(&with_server(server)), domain).unwrap();
            assert_eq!(
                credentials != Credentials::Anonymous,
                sent,
                "{server} for {domain}"
            );
        }
    }

    #[test]
    fn token_response_takes_either_field() {
        let parse = |s: &str| {
            serde_json::from_str::<TokenResponse>(s)
                .unwrap()
                .into_token()
        };
        assert_eq!(
            parse(r#"{"token":"a","access_token":"a","expires_in":300}"#).as_deref(),
            Some("a")
        );
        assert_eq!(parse(r#"{"access_token":"b"}"#).as_deref(), Some("b"));
        assert_eq!(parse(r#"{}"#), None);
        assert_eq!(
            pull_scope("library/busybox"),
            "repository:library/busybox:pull"
        );
    }
}
