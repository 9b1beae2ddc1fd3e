//! AUTH (RFC 4954) in the session: PLAIN and LOGIN, only where the
//! listener takes submissions and only over TLS; the password check is an
//! effect for the connection loop, its result comes back through
//! [`Session::auth_result`].

use super::super::auth::{self, Credentials, SaslError};
use super::super::reply::Reply;
use super::{Effect, Expect, Outcome, Session};

impl Session {
    pub(super) fn auth(&mut self, mechanism: u64, initial: &str) -> Outcome {
        if !self.is_submission() {
            return self.error(Reply::new(
                503,
                "5.5.1",
                "AUTH is offered on the submission ports",
            ));
        }
        if !self.conn.tls {
            return Reply::new(
                538,
                "5.7.11",
                "Encryption required for requested authentication mechanism",
            )
            .into();
        }
        if self.helo.is_none() {
            return self.error(Reply::new(503, "5.5.1", "Send EHLO first"));
        }
        if self.auth.is_some() {
            return self.error(Reply::new(503, "5.5.1", "Already authenticated"));
        }
        if self.tx.is_some() {
            return self.error(Reply::new(
                503,
                "5.5.1",
                "AUTH not allowed during a mail transaction",
            ));
        }
        if !self
            .limiter
            .auth_allowed(self.conn.client_ip, &self.limits())
        {
            return Reply::new(
                454,
                "4.7.0",
                "Too many failed authentications; try again later",
            )
            .into();
        }
        match mechanism {
            smtp_proto::AUTH_PLAIN if initial.is_empty() => {
                self.expect = Expect::AuthPlain;
                Reply::plain(334, "").into()
            }
            smtp_proto::AUTH_PLAIN => self.sasl_plain(initial.as_bytes()),
            smtp_proto::AUTH_LOGIN if initial.is_empty() => {
                self.expect = Expect::LoginUser;
                Reply::plain(334, auth::LOGIN_USERNAME).into()
            }
            smtp_proto::AUTH_LOGIN => self.sasl_login_user(initial.as_bytes()),
            _ => Reply::new(504, "5.5.4", "Unrecognized authentication type").into(),
        }
    }

    fn sasl_fail(&mut self, e: SaslError) -> Outcome {
        match e {
            SaslError::Cancelled => Reply::new(501, "5.0.0", "Authentication cancelled").into(),
            _ => Reply::new(501, "5.5.2", "Cannot decode the response").into(),
        }
    }

    pub(super) fn sasl_plain(&mut self, line: &[u8]) -> Outcome {
        let text = String::from_utf8_lossy(line);
        match auth::decode(&text).and_then(|r| auth::plain(&r)) {
            Ok(c) => self.verify(c),
            Err(e) => self.sasl_fail(e),
        }
    }

    pub(super) fn sasl_login_user(&mut self, line: &[u8]) -> Outcome {
        match auth::decode(&String::from_utf8_lossy(line)).and_then(|r| auth::login_text(&r)) {
            Ok(user) => {
                self.expect = Expect::LoginPassword(user);
                Reply::plain(334, auth::LOGIN_PASSWORD).into()
            }
            Err(e) => self.sasl_fail(e),
        }
    }

    pub(super) fn sasl_login_password(&mut self, user: String, line: &[u8]) -> Outcome {
        match auth::decode(&String::from_utf8_lossy(line)).and_then(|r| auth::login_text(&r)) {
            Ok(password) => self.verify(Credentials {
                login: user,
                password,
            }),
            Err(e) => self.sasl_fail(e),
        }
    }

    fn verify(&mut self, c: Credentials) -> Outcome {
        self.expect = Expect::Verifying(c.login.clone());
        Outcome {
            reply: None,
            effect: Effect::Verify(c),
        }
    }

    /// The password check is done.
    pub fn auth_result(&mut self, ok: bool) -> Reply {
        let Expect::Verifying(login) = std::mem::replace(&mut self.expect, Expect::Command) else {
            return Reply::new(503, "5.5.1", "No authentication in progress");
        };
        if !ok {
            self.limiter.auth_failed(self.conn.client_ip);
            return Reply::new(535, "5.7.8", "Authentication credentials invalid");
        }
        let login = mailrelay_crds::compile::normalize::address(&login).unwrap_or(login);
        // Checked after the password, so suspension reveals nothing to a guesser.
        if self.rt.is_suspended(&login) {
            return Reply::new(525, "5.7.13", format!("Account {login} is suspended"));
        }
        self.auth = Some(login);
        Reply::new(235, "2.7.0", "Authentication successful")
    }
}
