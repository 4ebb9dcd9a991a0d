//! The broker side: connection settings from the URL, the queues and exchanges, and the
//! arguments of each AMQP call.

use super::Topology;
use amqprs::channel::{
    BasicConsumeArguments, BasicPublishArguments, BasicQosArguments, Channel, ConfirmSelectArguments,
    ExchangeDeclareArguments, QueueBindArguments, QueueDeclareArguments,
};
use amqprs::connection::OpenConnectionArguments;
use amqprs::{BasicProperties, FieldTable, FieldValue};

/// Declares the queues and exchanges (idempotent; run on every connect).
pub(super) async fn declare(ch: &Channel, t: &Topology, version: &str) -> Result<(), amqprs::error::Error> {
    let dlx = format!("{}.dlx", t.prefix);
    let dead = format!("{}.dead", t.prefix);
    ch.exchange_declare(ExchangeDeclareArguments::new(&dlx, "fanout").durable(true).finish())
        .await?;
    ch.queue_declare(
        QueueDeclareArguments::durable_client_named(&dead)
            .arguments(classic())
            .finish(),
    )
    .await?;
    ch.queue_bind(QueueBindArguments::new(&dead, &dlx, "")).await?;
    for gpu in [false, true] {
        let mut args = classic();
        args.insert("x-max-priority".try_into().unwrap(), FieldValue::s(2));
        args.insert("x-dead-letter-exchange".try_into().unwrap(), dlx.as_str().into());
        if honours_queue_consumer_timeout(version) {
            args.insert(
                "x-consumer-timeout".try_into().unwrap(),
                FieldValue::l(t.consumer_timeout.as_millis() as i64),
            );
        }
        let q = t.jobs(gpu);
        ch.queue_declare(QueueDeclareArguments::durable_client_named(&q).arguments(args).finish())
            .await?;
    }
    ch.queue_declare(
        QueueDeclareArguments::durable_client_named(&t.webhooks())
            .arguments(classic())
            .finish(),
    )
    .await?;
    for secs in t.webhook_delays.iter().filter(|s| **s > 0) {
        let mut args = classic();
        args.insert("x-message-ttl".try_into().unwrap(), FieldValue::l(*secs as i64 * 1000));
        args.insert("x-dead-letter-exchange".try_into().unwrap(), "".into());
        args.insert(
            "x-dead-letter-routing-key".try_into().unwrap(),
            t.webhooks().as_str().into(),
        );
        let q = t.wait(*secs);
        ch.queue_declare(QueueDeclareArguments::durable_client_named(&q).arguments(args).finish())
            .await?;
    }
    Ok(())
}

/// The arguments every queue starts from: classic queues of version 2 (RabbitMQ 3.10 and later;
/// older brokers ignore the argument): its index and store cost the broker less per persistent
/// message than version 1's, and a confirmed publish waits less (BENCHMARKS.md, session 14). A
/// queue declared earlier with other arguments is refused with `PRECONDITION_FAILED`, logged.
fn classic() -> FieldTable {
    let mut args = FieldTable::new();
    args.insert("x-queue-version".try_into().unwrap(), FieldValue::s(2));
    args
}

/// Connection settings from an AMQP URI, decoding its parts: amqprs's own URI parsing leaves
/// `%2f` as is, and the default vhost `/` must be written `%2f`.
pub fn connection_args(url: &str) -> Result<OpenConnectionArguments, String> {
    let u = reqwest::Url::parse(url).map_err(|e| e.to_string())?;
    if u.scheme() != "amqp" {
        return Err(format!("scheme {}: only amqp:// is supported", u.scheme()));
    }
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8()
            .map(|d| d.into_owned())
            .map_err(|_| "invalid percent-encoding".to_string())
    };
    let vhost = match u.path() {
        "" | "/" => "/".to_string(),
        p => decode(&p[1..])?,
    };
    let user = if u.username().is_empty() {
        "guest".to_string()
    } else {
        decode(u.username())?
    };
    let password = decode(u.password().unwrap_or("guest"))?;
    let host = u.host_str().ok_or("no host")?;
    let mut args = OpenConnectionArguments::new(host, u.port().unwrap_or(5672), &user, &password);
    args.virtual_host(&vhost)
        .connection_name(concat!("meshroom-svc ", env!("CARGO_PKG_VERSION")));
    Ok(args.finish())
}

/// RabbitMQ honours the per-queue `x-consumer-timeout` from 3.12 on.
pub fn honours_queue_consumer_timeout(version: &str) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) >= (3, 12)
}

pub(super) fn persistent(priority: u8, traceparent: Option<&str>) -> BasicProperties {
    let mut props = BasicProperties::default();
    props.with_persistence(true).with_content_type("application/json");
    if priority > 0 {
        props.with_priority(priority);
    }
    if let Some(tp) = traceparent {
        let mut headers = FieldTable::new();
        headers.insert(TRACEPARENT.try_into().expect("short name"), FieldValue::from(tp));
        props.with_headers(headers);
    }
    props.finish()
}

/// The message header carrying the W3C trace context of the publish.
pub(super) const TRACEPARENT: &str = "traceparent";

/// The `traceparent` header of a delivered message.
pub(super) fn traceparent_of(props: Option<&BasicProperties>) -> Option<String> {
    let value = props?.headers()?.get(&TRACEPARENT.try_into().ok()?)?;
    match value {
        FieldValue::S(s) => Some(s.to_string()),
        _ => None,
    }
}

pub(super) fn publish_args(queue: &str) -> BasicPublishArguments {
    BasicPublishArguments::new("", queue)
}

pub(super) fn qos(prefetch: u16) -> BasicQosArguments {
    // global = true: RabbitMQ applies the limit to the whole channel, across both job queues.
    BasicQosArguments::new(0, prefetch, true)
}

pub(super) fn consume_args(queue: &str) -> BasicConsumeArguments {
    BasicConsumeArguments::new(queue, "").manual_ack(true).finish()
}

pub(super) fn confirm_args() -> ConfirmSelectArguments {
    ConfirmSelectArguments::new(false)
}

#[cfg(test)]
mod tests {
    #[test]
    fn urls_are_decoded() {
        let a = super::connection_args("amqp://us%40er:p%2Fw@broker:5673/%2f").unwrap();
        assert_eq!(
            (a.get_host(), a.get_port(), a.get_virtual_host()),
            ("broker", 5673, "/")
        );
        assert!(a.get_credentials() == &amqprs::security::SecurityCredentials::new_plain("us@er", "p/w"));
        let b = super::connection_args("amqp://h/jobs").unwrap();
        assert_eq!((b.get_port(), b.get_virtual_host()), (5672, "jobs"));
        assert!(super::connection_args("amqps://h/").is_err());
        assert!(super::connection_args("not a url").is_err());
    }

    #[test]
    fn consumer_timeout_argument_needs_3_12() {
        assert!(!super::honours_queue_consumer_timeout("3.10.8"));
        assert!(!super::honours_queue_consumer_timeout("3.11.28"));
        assert!(super::honours_queue_consumer_timeout("3.12.0"));
        assert!(super::honours_queue_consumer_timeout("4.0.5"));
        assert!(!super::honours_queue_consumer_timeout("garbage"));
    }
}
