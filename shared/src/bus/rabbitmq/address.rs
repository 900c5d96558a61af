//! Where a RabbitMQ stream listener is and how to log in: the `rabbitmq-stream://` URL of
//! `bus.url`, parsed (nothing is contacted here).

/// Where a RabbitMQ stream listener is and how to log in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Address {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) user: String,
    pub(crate) password: String,
    pub(crate) vhost: String,
}

impl Address {
    /// Parses `rabbitmq-stream://user:password@host:port/vhost` (defaults: guest, guest, 5552,
    /// `/`; the vhost percent-encoded, `%2f` being `/`).
    pub(crate) fn parse(url: &str) -> Result<Self, String> {
        let parsed = reqwest::Url::parse(url).map_err(|e| e.to_string())?;
        if parsed.scheme() != "rabbitmq-stream" {
            return Err(format!(
                "scheme `{}`: use rabbitmq-stream://",
                parsed.scheme()
            ));
        }
        let host = parsed
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or("no host")?;
        let decode = |s: &str| {
            percent_decode(s).ok_or_else(|| format!("`{s}` is not valid percent-encoded UTF-8"))
        };
        let user = if parsed.username().is_empty() {
            "guest".to_owned()
        } else {
            decode(parsed.username())?
        };
        let password = parsed.password().map_or(Ok("guest".to_owned()), decode)?;
        let path = parsed.path().trim_start_matches('/');
        let vhost = if path.is_empty() {
            "/".to_owned()
        } else {
            decode(path)?
        };
        Ok(Self {
            host: host.trim_matches(['[', ']']).to_owned(),
            port: parsed.port().unwrap_or(5552),
            user,
            password,
            vhost,
        })
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_defaults_and_percent_encoding() {
        let a = Address::parse("rabbitmq-stream://127.0.0.1").expect("defaults");
        assert_eq!(
            (
                a.port,
                a.user.as_str(),
                a.password.as_str(),
                a.vhost.as_str()
            ),
            (5552, "guest", "guest", "/")
        );
        let b = Address::parse("rabbitmq-stream://u%40x:p%3Aw@mq:5553/prod%2fa").expect("full");
        assert_eq!(
            (
                b.host.as_str(),
                b.port,
                b.user.as_str(),
                b.password.as_str(),
                b.vhost.as_str()
            ),
            ("mq", 5553, "u@x", "p:w", "prod/a")
        );
        assert!(Address::parse("amqp://mq").is_err());
        assert!(Address::parse("rabbitmq-stream://mq/%zz").is_err());
        assert!(Address::parse("not a url").is_err());
    }
}
