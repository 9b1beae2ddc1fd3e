//! Submission accounts: `LOGIN:HASH` lines from a mounted Secret, with
//! argon2 (`$argon2id$...`) or bcrypt (`$2b$...`) hashes.

use std::collections::HashMap;
use std::path::Path;

use argon2::{Argon2, PasswordHash, PasswordVerifier};
use mailrelay_crds::compile::normalize;

/// One account as read from the file.
#[derive(Clone, Debug)]
pub(crate) struct Account {
    hash: String,
}

/// Accounts of all hosted domains, by normalised login.
#[derive(Clone, Debug, Default)]
pub struct Accounts {
    by_login: HashMap<String, Account>,
}

/// A line that could not be used (reported, never fatal for the others).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct BadLine {
    pub line: usize,
    pub reason: String,
}

impl Accounts {
    /// Parse one accounts file's text. Logins outside `domains` are refused:
    /// a domain's Secret may only hold that domain's accounts.
    pub(crate) fn parse_into(&mut self, text: &str, domains: &[&str]) -> Vec<BadLine> {
        let mut bad = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut fail = |reason: &str| {
                bad.push(BadLine {
                    line: i + 1,
                    reason: reason.to_string(),
                })
            };
            let Some((login, hash)) = line.split_once(':') else {
                fail("expected LOGIN:HASH");
                continue;
            };
            let Ok(login) = normalize::address(login.trim()) else {
                fail("the login is not an address such as alice@example.com");
                continue;
            };
            if !domains.iter().any(|d| login.ends_with(&format!("@{d}"))) {
                fail("the login's domain is not this MailDomain's");
                continue;
            }
            let hash = hash.trim();
            if !(hash.starts_with("$argon2") || hash.starts_with("$2")) {
                fail("the hash must be argon2 ($argon2id$...) or bcrypt ($2b$...)");
                continue;
            }
            self.by_login.insert(
                login,
                Account {
                    hash: hash.to_string(),
                },
            );
        }
        bad
    }

    /// Read one accounts file.
    pub(crate) fn load_file(
        &mut self,
        path: &Path,
        domains: &[&str],
    ) -> Result<Vec<BadLine>, std::io::Error> {
        let text = std::fs::read_to_string(path)?;
        Ok(self.parse_into(&text, domains))
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.by_login.len()
    }

    /// The stored hash for a login, for verification off the async runtime.
    pub(crate) fn hash_of(&self, login: &str) -> Option<String> {
        let login = normalize::address(login).ok()?;
        self.by_login.get(&login).map(|a| a.hash.clone())
    }
}

/// Check a password against a stored hash. CPU-heavy by design: call it
/// from a blocking thread. Unknown logins are checked against a dummy hash
/// so timing does not reveal which logins exist.
pub(crate) fn verify(hash: Option<&str>, password: &str) -> bool {
    const DUMMY: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$Ktq1TW+Y1qGIg5tnKSqsDbN4RR4Bj/HgvUS9Is6xNvM";
    let (hash, known) = match hash {
        Some(h) => (h, true),
        None => (DUMMY, false),
    };
    let ok = if hash.starts_with("$2") {
        bcrypt::verify(password, hash).unwrap_or(false)
    } else {
        PasswordHash::new(hash)
            .map(|h| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &h)
                    .is_ok()
            })
            .unwrap_or(false)
    };
    ok && known
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::PasswordHasher;
    use argon2::password_hash::SaltString;

    fn argon2_hash(password: &str) -> String {
        let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .unwrap()
            .to_string()
    }

    #[test]
    fn argon2_and_bcrypt_hashes_verify() {
        let a = argon2_hash("s3cret");
        assert!(verify(Some(&a), "s3cret"));
        assert!(!verify(Some(&a), "wrong"));
        let b = bcrypt::hash("s3cret", 4).unwrap();
        assert!(verify(Some(&b), "s3cret"));
        assert!(!verify(Some(&b), "S3cret"));
        assert!(!verify(None, "anything"));
        assert!(!verify(Some("$argon2id$garbage"), "x"));
    }

    #[test]
    fn account_files_are_parsed_per_domain() {
        let hash = argon2_hash("pw");
        let text = format!(
            "# comment\nAlice@Example.com:{hash}\nbob@other.example:{hash}\nnocolon\ncarol@example.com:plaintext\n\n"
        );
        let mut accounts = Accounts::default();
        let bad = accounts.parse_into(&text, &["example.com"]);
        assert_eq!(accounts.len(), 1);
        assert!(accounts.hash_of("alice@EXAMPLE.com").is_some());
        let lines: Vec<usize> = bad.iter().map(|b| b.line).collect();
        assert_eq!(lines, [3, 4, 5]);
    }
}
