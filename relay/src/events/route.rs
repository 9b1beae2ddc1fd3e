//! Which webhooks want an event: the type filter of each, and for a
//! MailDomain's webhook whether the event is that domain's — the
//! recipient's domain when it is hosted here (mail it receives), else the
//! sender's (mail its accounts send).

use mailrelay_crds::config::WebhookConfig;

use super::record::Event;

/// The domain an event belongs to, as the hosted domain's name; `hosted`
/// maps a domain or alias to the hosted domain's name.
pub(crate) fn owner<'a>(
    event: &Event,
    hosted: impl Fn(&str) -> Option<&'a str>,
) -> Option<&'a str> {
    let domain_of = |addr: &Option<String>| {
        addr.as_deref()
            .and_then(|a| a.rsplit_once('@'))
            .map(|(_, d)| d.to_ascii_lowercase())
    };
    domain_of(&event.recipient)
        .and_then(|d| hosted(&d))
        .or_else(|| domain_of(&event.sender).and_then(|d| hosted(&d)))
}

/// The names of the webhooks that take `event`.
pub(crate) fn targets<'w>(
    webhooks: &'w [WebhookConfig],
    event: &Event,
    owner: Option<&str>,
) -> Vec<&'w str> {
    webhooks
        .iter()
        .filter(|w| w.types.is_empty() || w.types.contains(&event.kind))
        .filter(|w| w.domain.is_none() || w.domain.as_deref() == owner)
        .map(|w| w.name.as_str())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::record::EventType;
    use mailrelay_crds::config::SecretFile;

    fn hook(name: &str, domain: Option<&str>, types: &[EventType]) -> WebhookConfig {
        WebhookConfig {
            name: name.into(),
            url: "http://h.test/".into(),
            secret: SecretFile::new("s", "k"),
            types: types.to_vec(),
            domain: domain.map(str::to_string),
            batch_size: 10,
            batch_window_ms: 100,
            timeout_ms: 1000,
        }
    }

    fn event(kind: EventType, sender: &str, recipient: Option<&str>) -> Event {
        let mut e = crate::events::testing::event(kind);
        e.sender = Some(sender.into());
        e.recipient = recipient.map(str::to_string);
        e
    }

    fn hosted(d: &str) -> Option<&'static str> {
        match d {
            "shop.test" | "alias-of-shop.test" => Some("shop.test"),
            "blog.test" => Some("blog.test"),
            _ => None,
        }
    }

    #[test]
    fn an_event_belongs_to_the_hosted_recipient_domain_else_to_the_hosted_sender_domain() {
        let cases = [
            (
                event(
                    EventType::Delivery,
                    "a@remote.test",
                    Some("b@Alias-Of-Shop.test"),
                ),
                Some("shop.test"),
            ),
            (
                event(EventType::Delivery, "a@shop.test", Some("b@remote.test")),
                Some("shop.test"),
            ),
            (
                event(EventType::Delivery, "a@shop.test", Some("b@blog.test")),
                Some("blog.test"),
            ),
            (event(EventType::Bounce, "", Some("b@remote.test")), None),
            (
                event(EventType::Rejection, "a@blog.test", None),
                Some("blog.test"),
            ),
            (
                event(EventType::Delivery, "a@remote.test", Some("b@other.test")),
                None,
            ),
        ];
        for (e, want) in cases {
            assert_eq!(
                owner(&e, hosted),
                want,
                "{:?} -> {:?}",
                e.sender,
                e.recipient
            );
        }
    }

    #[test]
    fn webhooks_take_their_types_and_a_tenant_only_its_domain() {
        let hooks = [
            hook("relay:all", None, &[]),
            hook("relay:bounces", None, &[EventType::Bounce]),
            hook("domain:shop.test", Some("shop.test"), &[]),
        ];
        let d = event(EventType::Delivery, "a@shop.test", Some("b@remote.test"));
        assert_eq!(
            targets(&hooks, &d, Some("shop.test")),
            ["relay:all", "domain:shop.test"]
        );
        let b = event(EventType::Bounce, "a@blog.test", Some("b@remote.test"));
        assert_eq!(
            targets(&hooks, &b, Some("blog.test")),
            ["relay:all", "relay:bounces"]
        );
        assert_eq!(targets(&hooks, &b, None), ["relay:all", "relay:bounces"]);
    }
}
