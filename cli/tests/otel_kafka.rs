//! One trace per event across two services chained through a Kafka topic on a real broker
//! (tansu), checked by the test kit's OTLP receiver.
//!
//! Service A (`file → remap → kafka`) and service B (`kafka → remap → filter → file`) are two
//! `feedline` processes. Each event A reads becomes one trace: A's source, transform and sink
//! spans, then — through the `traceparent` header the Kafka sink wrote and the Kafka source read —
//! B's source, transforms and sink, each span the parent of the next. Records produced by a third
//! party with a sampled `traceparent` join that party's trace; with an unsampled one they are not
//! traced at all (parent-based sampling).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod otel_support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use feedline_testkit::otlp::{chain, OtlpReceiver, ReceivedSpan};
use feedline_testkit::tansu::{Tansu, TEST_FETCH_WAIT_MS};
use otel_support::*;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

const TOPIC: &str = "traced-events";
const EVENTS: usize = 20;
/// A third party's sampled context (trace T1, its producer span P1) and an unsampled one.
const T1: &str = "0af7651916cd43dd8448eb211c80319c";
const P1: &str = "b7ad6b7169203331";
const T2: &str = "1bf7651916cd43dd8448eb211c80319d";

fn pipeline_a(brokers: &str) -> String {
    format!(
        r#"
name = "service-a"

[source]
type = "file"
path = "in.jsonl"

[[transforms]]
type = "remap"
ops = [{{ set_key = {{ from = "/id" }} }}, {{ set = {{ path = "/via", value = "a" }} }}]

[[sinks]]
type = "kafka"
brokers = "{brokers}"
topic = "{TOPIC}"
"#
    )
}

fn pipeline_b(brokers: &str) -> String {
    format!(
        r#"
name = "service-b"

[source]
type = "kafka"
brokers = "{brokers}"
group_id = "otel-service-b"
topics = ["{TOPIC}"]
start = "earliest"

[source.librdkafka]
"fetch.wait.max.ms" = "{TEST_FETCH_WAIT_MS}"

[[transforms]]
type = "remap"
ops = [{{ set = {{ path = "/hop", value = "b" }} }}]

[[transforms]]
type = "filter"
condition = {{ exists = "id" }}

[[sinks]]
type = "file"
path = "out.jsonl"
fsync = false
"#
    )
}

/// Produce records with a `traceparent` header, as another service would.
fn produce_with_traceparent(brokers: &str, records: &[(&str, String)]) {
    let producer: BaseProducer = ClientConfig::new().set("bootstrap.servers", brokers).create().unwrap();
    for (id, traceparent) in records {
        let payload = format!("{{\"id\":\"{id}\",\"via\":\"third-party\"}}");
        let headers =
            OwnedHeaders::new().insert(Header { key: "traceparent", value: Some(traceparent.as_str()) });
        producer
            .send(BaseRecord::<str, str>::to(TOPIC).key(*id).payload(&payload).headers(headers))
            .map_err(|(e, _)| e)
            .unwrap();
    }
    producer.flush(Duration::from_secs(30)).unwrap();
}

/// Every record of the topic's `partitions` partitions: key → traceparent header.
fn traceparents(brokers: &str, partitions: i32, expect: usize) -> HashMap<String, String> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "otel-test-reader")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", TEST_FETCH_WAIT_MS.to_string())
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(TOPIC, p, Offset::Beginning).unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut out = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while out.len() < expect && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
            let tp = m
                .headers()
                .and_then(|h| h.iter().find(|h| h.key == "traceparent").and_then(|h| h.value))
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default();
            out.insert(key, tp);
        }
    }
    out
}

fn names(chain: &[ReceivedSpan]) -> Vec<(String, String)> {
    chain.iter().map(|s| (s.service.clone(), s.name.clone())).collect()
}

#[test]
fn one_trace_per_event_across_two_services_through_kafka() {
    let tansu = Tansu::start();
    tansu.create_topic(TOPIC, 2);
    let brokers = tansu.brokers();
    let receiver = OtlpReceiver::start();

    // Service A: file → kafka, to the end of its input.
    let a = Workdir::new();
    let input: String = (0..EVENTS).map(|i| format!("{{\"id\":\"doc-{i}\"}}\n")).collect();
    a.write("in.jsonl", &input);
    let a_pipeline = a.write("a.toml", &pipeline_a(&brokers));
    let a_env = otel_env(&receiver.grpc_endpoint(), "grpc", "feedline-a", "parentbased_always_on", "1");
    let mut fa = run(&a_pipeline, &a.path("data"), &a.path("a.log"), &as_refs(&a_env));
    let status = fa.wait_timeout(Duration::from_secs(90)).expect("service A finishes its file");
    assert!(status.success(), "service A:\n{}", fa.log());

    // A third party: one record in a sampled trace, one in an unsampled one.
    produce_with_traceparent(
        &brokers,
        &[("third-sampled", format!("00-{T1}-{P1}-01")), ("third-unsampled", format!("00-{T2}-{P1}-00"))],
    );

    // The records carry A's sink span as their parent context.
    let headers = traceparents(&brokers, 2, EVENTS + 2);
    assert_eq!(headers.len(), EVENTS + 2, "{headers:?}");

    // Service B (over HTTP/protobuf, to cover both transports): kafka → transforms → file.
    let b = Workdir::new();
    let b_pipeline = b.write("b.toml", &pipeline_b(&brokers));
    let b_env =
        otel_env(&receiver.http_endpoint(), "http/protobuf", "feedline-b", "parentbased_always_on", "1");
    let mut fb = run(&b_pipeline, &b.path("data"), &b.path("b.log"), &as_refs(&b_env));
    let delivered = feedline_testkit::wait_until(Duration::from_secs(90), || {
        lines(&b.path("out.jsonl")).len() >= EVENTS + 2
    });
    assert!(delivered, "service B did not deliver everything:\n{}", fb.log());
    fb.signal(15);
    let status = fb.wait_timeout(Duration::from_secs(30)).expect("service B exits on SIGTERM");
    assert!(status.success(), "service B:\n{}", fb.log());

    let spans = receiver.spans();
    let traces = event_traces(&spans);
    if let Some((_, first)) = traces.iter().find(|(t, _)| t.as_str() != T1) {
        eprintln!("one of {} traces:\n{}", traces.len(), dump(first));
    }
    assert!(!traces.contains_key(T2), "an unsampled incoming context is not traced:\n{}", dump(&spans));
    let expected: Vec<(String, String)> = [
        ("feedline-a", "source.file"),
        ("feedline-a", "transform.remap"),
        ("feedline-a", "sink.kafka"),
        ("feedline-b", "source.kafka"),
        ("feedline-b", "transform.remap"),
        ("feedline-b", "transform.filter"),
        ("feedline-b", "sink.file"),
    ]
    .iter()
    .map(|(s, n)| (s.to_string(), n.to_string()))
    .collect();
    let mut seen_keys = Vec::new();
    for (trace, spans) in &traces {
        if trace == T1 {
            continue;
        }
        let chain =
            chain(spans).unwrap_or_else(|| panic!("trace {trace} is not one chain:\n{}", dump(spans)));
        assert_eq!(names(&chain), expected, "trace {trace}:\n{}", dump(spans));
        let (producer, consumer) = (&chain[2], &chain[3]);
        assert_eq!(producer.kind, 4, "sink.kafka is a producer span");
        assert_eq!(consumer.kind, 5, "source.kafka is a consumer span");
        assert_eq!(consumer.parent_span_id, producer.span_id, "B's source continues A's sink");
        assert_eq!(producer.attr("messaging.system").as_deref(), Some("kafka"));
        assert_eq!(consumer.attr("messaging.system").as_deref(), Some("kafka"));
        assert_eq!(consumer.attr("messaging.destination.name").as_deref(), Some(TOPIC));
        let partition = consumer.attr("messaging.destination.partition.id").unwrap();
        assert!(partition == "0" || partition == "1", "{partition}");
        assert!(consumer.attr("messaging.kafka.offset").unwrap().parse::<i64>().unwrap() >= 0);
        let key = consumer.attr("messaging.kafka.message.key").unwrap();
        // The record's header names A's sink span.
        assert_eq!(headers[&key], format!("00-{trace}-{}-01", producer.span_id), "header of {key}");
        seen_keys.push(key);
    }
    seen_keys.sort();
    seen_keys.dedup();
    assert_eq!(seen_keys.len(), EVENTS, "one trace per event of A:\n{}", dump(&spans));

    // The third party's sampled record joined its trace, under its producer span.
    let t1 =
        traces.get(T1).unwrap_or_else(|| panic!("no spans in the third party's trace:\n{}", dump(&spans)));
    let chain = chain(t1).unwrap();
    assert_eq!(chain[0].name, "source.kafka");
    assert_eq!(chain[0].parent_span_id, P1);
    assert_eq!(chain.last().unwrap().name, "sink.file");

    // Batch spans of both services.
    let batches = batch_spans(&spans);
    for (service, name) in
        [("feedline-a", "sink.kafka"), ("feedline-b", "source.kafka"), ("feedline-b", "sink.file")]
    {
        assert!(
            batches.iter().any(|s| s.service == service && s.name == name),
            "no {name} batch span from {service}:\n{}",
            dump(&batches)
        );
    }
}
