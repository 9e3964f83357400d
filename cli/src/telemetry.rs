//! The one place that installs the `tracing` subscriber and the OpenTelemetry exporter.
//!
//! Configuration is process-level: the standard `OTEL_*` environment variables, over an optional
//! `[telemetry]` table in the file given by `feedline run --telemetry-config` (or
//! `FEEDLINE_TELEMETRY_CONFIG`). Environment wins over the file, so a deployment can point the same
//! file at another collector. Tracing is on when an endpoint is configured (and
//! `OTEL_SDK_DISABLED` / `OTEL_TRACES_EXPORTER=none` do not turn it off); otherwise the pipeline
//! pays nothing beyond its `tracing` batch spans. See `docs/observability.md`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context as _};
use feedline_engine::telemetry::export::{BatchConfig, BoundedBatchProcessor, ExportHealth};
use feedline_engine::telemetry::{Telemetry, STAGE_TARGET};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{filter, EnvFilter, Layer};

use crate::LogFormat;

/// How spans leave the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// OTLP over gRPC (collector port 4317).
    Grpc,
    /// OTLP over HTTP with protobuf bodies (collector port 4318, path `/v1/traces`).
    HttpProtobuf,
}

/// Resolved exporter settings.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetryConfig {
    /// Full URL spans are sent to (for HTTP including `/v1/traces`).
    pub endpoint: String,
    /// gRPC or HTTP/protobuf.
    pub protocol: OtlpProtocol,
    /// `service.name` of the resource.
    pub service_name: String,
    /// Sampler name as in `OTEL_TRACES_SAMPLER`, and its argument.
    pub sampler: String,
    /// `OTEL_TRACES_SAMPLER_ARG` (ratio for the `*traceidratio` samplers).
    pub sampler_arg: Option<f64>,
    /// Extra resource attributes.
    pub resource_attributes: BTreeMap<String, String>,
    /// Queue and batch sizes.
    pub batch: BatchConfig,
}

const KNOWN_KEYS: &[&str] = &[
    "endpoint",
    "protocol",
    "service_name",
    "sampler",
    "sampler_arg",
    "resource_attributes",
    "max_queue_size",
    "max_export_batch_size",
    "scheduled_delay_ms",
    "export_timeout_ms",
];

/// Settings from the `[telemetry]` table of a file, before the environment is applied.
#[derive(Debug, Default, Clone, PartialEq)]
struct FileSettings {
    endpoint: Option<String>,
    protocol: Option<String>,
    service_name: Option<String>,
    sampler: Option<String>,
    sampler_arg: Option<f64>,
    resource_attributes: BTreeMap<String, String>,
    max_queue_size: Option<usize>,
    max_export_batch_size: Option<usize>,
    scheduled_delay_ms: Option<u64>,
    export_timeout_ms: Option<u64>,
}

fn parse_file(path: &Path) -> anyhow::Result<FileSettings> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse_settings(&text).with_context(|| format!("{}", path.display()))
}

fn parse_settings(text: &str) -> anyhow::Result<FileSettings> {
    let doc: toml_edit::DocumentMut = text.parse().context("not valid TOML")?;
    let mut out = FileSettings::default();
    for (key, _) in doc.iter() {
        if key != "telemetry" {
            bail!("unknown top-level key `{key}`: telemetry settings go in a `[telemetry]` table");
        }
    }
    let Some(table) = doc.get("telemetry") else { return Ok(out) };
    let table = table.as_table_like().context("`telemetry` must be a table")?;
    for (key, item) in table.iter() {
        let str_value = || -> anyhow::Result<String> {
            item.as_str().map(str::to_owned).with_context(|| format!("`telemetry.{key}` must be a string"))
        };
        let int_value = || -> anyhow::Result<u64> {
            item.as_integer()
                .and_then(|i| u64::try_from(i).ok())
                .with_context(|| format!("`telemetry.{key}` must be a non-negative integer"))
        };
        match key {
            "endpoint" => out.endpoint = Some(str_value()?),
            "protocol" => out.protocol = Some(str_value()?),
            "service_name" => out.service_name = Some(str_value()?),
            "sampler" => out.sampler = Some(str_value()?),
            "sampler_arg" => {
                let v = item
                    .as_float()
                    .or_else(|| item.as_integer().map(|i| i as f64))
                    .with_context(|| format!("`telemetry.{key}` must be a number"))?;
                out.sampler_arg = Some(v);
            }
            "resource_attributes" => {
                let t = item.as_table_like().context("`telemetry.resource_attributes` must be a table")?;
                for (k, v) in t.iter() {
                    let v = v
                        .as_str()
                        .with_context(|| format!("`telemetry.resource_attributes.{k}` must be a string"))?;
                    out.resource_attributes.insert(k.to_owned(), v.to_owned());
                }
            }
            "max_queue_size" => out.max_queue_size = Some(int_value()? as usize),
            "max_export_batch_size" => out.max_export_batch_size = Some(int_value()? as usize),
            "scheduled_delay_ms" => out.scheduled_delay_ms = Some(int_value()?),
            "export_timeout_ms" => out.export_timeout_ms = Some(int_value()?),
            other => {
                let hint = KNOWN_KEYS
                    .iter()
                    .min_by_key(|k| levenshtein(k, other))
                    .map(|k| format!(" (did you mean `{k}`?)"))
                    .unwrap_or_default();
                bail!("unknown key `telemetry.{other}`{hint}; known: {}", KNOWN_KEYS.join(", "));
            }
        }
    }
    Ok(out)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// `k1=v1,k2=v2` (values percent-decoded), as in `OTEL_RESOURCE_ATTRIBUTES`.
fn parse_resource_attributes(text: &str) -> BTreeMap<String, String> {
    text.split(',')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            let k = k.trim();
            (!k.is_empty()).then(|| (k.to_owned(), percent_decode(v.trim())))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `url` with any `user:token@` before its host replaced by `***@`, for logs and errors.
fn without_userinfo(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) if scheme.is_empty() => format!("***{}", &rest[at..]),
        Some(at) => format!("{scheme}://***{}", &rest[at..]),
        None => url.to_owned(),
    }
}

/// Join a base endpoint and the signal path the way the OTLP/HTTP spec says.
fn http_traces_url(base: &str) -> String {
    format!("{}/v1/traces", base.trim_end_matches('/'))
}

/// Resolve the settings: `env` (the `OTEL_*` variables) over `file` over defaults. `None` when
/// tracing is off.
fn resolve(
    file: Option<FileSettings>,
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<Option<TelemetryConfig>> {
    let env = |name: &str| env(name).filter(|v| !v.trim().is_empty());
    if env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
        || env("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"))
    {
        return Ok(None);
    }
    let file = file.unwrap_or_default();
    let protocol_name = env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .or(file.protocol.clone())
        .unwrap_or_else(|| "http/protobuf".into());
    let protocol = match protocol_name.as_str() {
        "grpc" => OtlpProtocol::Grpc,
        "http/protobuf" => OtlpProtocol::HttpProtobuf,
        other => bail!("unsupported OTLP protocol `{other}`: use `grpc` or `http/protobuf`"),
    };
    let endpoint = if let Some(full) = env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
        full // signal-specific: used as is
    } else if let Some(base) = env("OTEL_EXPORTER_OTLP_ENDPOINT").or(file.endpoint.clone()) {
        match protocol {
            OtlpProtocol::Grpc => base,
            OtlpProtocol::HttpProtobuf => http_traces_url(&base),
        }
    } else {
        return Ok(None); // no endpoint: tracing off
    };
    if endpoint.starts_with("https://") {
        let endpoint = without_userinfo(&endpoint);
        bail!(
            "OTLP endpoint `{endpoint}`: TLS is not built into feedline's exporter; send to a collector \
             or agent next to it over http:// (see docs/observability.md)"
        );
    }
    if !endpoint.starts_with("http://") {
        bail!("OTLP endpoint `{}` must start with http://", without_userinfo(&endpoint));
    }
    let mut resource_attributes = file.resource_attributes.clone();
    if let Some(text) = env("OTEL_RESOURCE_ATTRIBUTES") {
        resource_attributes.extend(parse_resource_attributes(&text));
    }
    let service_name = env("OTEL_SERVICE_NAME")
        .or(file.service_name.clone())
        .or_else(|| resource_attributes.get("service.name").cloned())
        .unwrap_or_else(|| "feedline".into());
    resource_attributes.remove("service.name");
    let sampler =
        env("OTEL_TRACES_SAMPLER").or(file.sampler.clone()).unwrap_or_else(|| "parentbased_always_on".into());
    let sampler_arg = match env("OTEL_TRACES_SAMPLER_ARG") {
        Some(a) => Some(
            a.trim()
                .parse::<f64>()
                .with_context(|| format!("OTEL_TRACES_SAMPLER_ARG `{a}` is not a number"))?,
        ),
        None => file.sampler_arg,
    };
    build_sampler(&sampler, sampler_arg)?; // validate early
    let defaults = BatchConfig::default();
    let env_num = |name: &str| -> anyhow::Result<Option<u64>> {
        env(name)
            .map(|v| v.trim().parse::<u64>().with_context(|| format!("{name} `{v}` is not a number")))
            .transpose()
    };
    let batch = BatchConfig {
        max_queue_size: env_num("OTEL_BSP_MAX_QUEUE_SIZE")?
            .map(|v| v as usize)
            .or(file.max_queue_size)
            .unwrap_or(defaults.max_queue_size),
        max_export_batch_size: env_num("OTEL_BSP_MAX_EXPORT_BATCH_SIZE")?
            .map(|v| v as usize)
            .or(file.max_export_batch_size)
            .unwrap_or(defaults.max_export_batch_size),
        scheduled_delay: env_num("OTEL_BSP_SCHEDULE_DELAY")?
            .or(file.scheduled_delay_ms)
            .map(Duration::from_millis)
            .unwrap_or(defaults.scheduled_delay),
        export_timeout: env_num("OTEL_BSP_EXPORT_TIMEOUT")?
            .or(file.export_timeout_ms)
            .map(Duration::from_millis)
            .unwrap_or(defaults.export_timeout),
    };
    Ok(Some(TelemetryConfig {
        endpoint,
        protocol,
        service_name,
        sampler,
        sampler_arg,
        resource_attributes,
        batch,
    }))
}

/// The chance that a span without a parent is sampled, decided by its trace id alone (all the
/// samplers `build_sampler` accepts).
fn root_ratio(name: &str, arg: Option<f64>) -> Option<f64> {
    match name.strip_prefix("parentbased_").unwrap_or(name) {
        "always_on" => Some(1.0),
        "always_off" => Some(0.0),
        "traceidratio" => Some(arg.unwrap_or(1.0)),
        _ => None,
    }
}

/// The sampler named as in `OTEL_TRACES_SAMPLER`.
fn build_sampler(name: &str, arg: Option<f64>) -> anyhow::Result<Sampler> {
    let ratio = || -> anyhow::Result<f64> {
        let r = arg.unwrap_or(1.0);
        if !(0.0..=1.0).contains(&r) {
            bail!("sampler argument {r} must be between 0 and 1");
        }
        Ok(r)
    };
    Ok(match name {
        "always_on" => Sampler::AlwaysOn,
        "always_off" => Sampler::AlwaysOff,
        "traceidratio" => Sampler::TraceIdRatioBased(ratio()?),
        "parentbased_always_on" => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
        "parentbased_always_off" => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
        "parentbased_traceidratio" => Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio()?))),
        other => bail!(
            "unsupported sampler `{other}`: use always_on, always_off, traceidratio, parentbased_always_on, \
             parentbased_always_off or parentbased_traceidratio"
        ),
    })
}

/// What `init` installed; keep it alive while pipelines run and call [`Installed::shutdown`]
/// before exiting so queued spans are flushed.
#[derive(Default)]
pub struct Installed {
    /// For the runtime: per-event spans (off when no exporter is configured).
    pub telemetry: Telemetry,
    /// Exporter health, to register with the `/metrics` registry.
    pub health: Option<ExportHealth>,
    provider: Option<SdkTracerProvider>,
}

impl Installed {
    /// Flush queued spans (bounded) and stop the export thread.
    pub fn shutdown(&self) {
        if let Some(p) = &self.provider {
            if let Err(e) = p.shutdown_with_timeout(Duration::from_secs(5)) {
                tracing::debug!(error = %e, "span exporter shutdown");
            }
        }
    }
}

/// Build the tracer provider for `config` (spans exported through a bounded, counting queue).
pub fn provider(config: &TelemetryConfig, health: ExportHealth) -> anyhow::Result<SdkTracerProvider> {
    let endpoint = config.endpoint.clone();
    let protocol = config.protocol;
    let processor = BoundedBatchProcessor::spawn(config.batch.clone(), health, move || {
        let built = match protocol {
            OtlpProtocol::Grpc => {
                opentelemetry_otlp::SpanExporter::builder().with_tonic().with_endpoint(endpoint).build()
            }
            OtlpProtocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary)
                .with_endpoint(endpoint)
                .build(),
        };
        built.map_err(|e| format!("building the OTLP exporter: {e}"))
    })
    .map_err(anyhow::Error::msg)?;
    let mut attributes: Vec<KeyValue> =
        config.resource_attributes.iter().map(|(k, v)| KeyValue::new(k.clone(), v.clone())).collect();
    attributes.push(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    let resource = Resource::builder_empty()
        .with_detector(Box::new(opentelemetry_sdk::resource::TelemetryResourceDetector))
        .with_attributes(attributes)
        .with_service_name(config.service_name.clone())
        .build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(build_sampler(&config.sampler, config.sampler_arg)?)
        .with_id_generator(feedline_engine::telemetry::PresampledIds)
        .with_resource(resource)
        .build())
}

/// Install the subscriber (logs on stderr, filtered by `RUST_LOG`) and, when configured, the
/// OpenTelemetry exporter. `config_file` is `--telemetry-config`; only `run` passes one and only
/// `run` exports (`exporting`).
pub fn init(format: LogFormat, config_file: Option<&Path>, exporting: bool) -> anyhow::Result<Installed> {
    let resolved = if exporting {
        let file = config_file.map(parse_file).transpose()?;
        resolve(file, &|name| std::env::var(name).ok())?
    } else {
        None
    };
    let mut installed = Installed::default();
    let otel_layer = match &resolved {
        Some(config) => {
            let health = ExportHealth::new();
            let provider = provider(config, health.clone())?;
            let tracer = provider.tracer("feedline");
            installed = Installed {
                telemetry: match root_ratio(&config.sampler, config.sampler_arg) {
                    Some(r) => Telemetry::new(tracer.clone()).with_root_ratio(r),
                    None => Telemetry::new(tracer.clone()),
                },
                health: Some(health),
                provider: Some(provider),
            };
            // Stage spans, and warnings/errors logged inside them (retries) as span events.
            let select = filter::filter_fn(|meta| {
                meta.target() == STAGE_TARGET || (meta.is_event() && *meta.level() <= tracing::Level::WARN)
            });
            Some(
                tracing_opentelemetry::layer()
                    .with_tracer(tracer)
                    .with_tracked_inactivity(false)
                    .with_threads(false)
                    .with_location(false)
                    .with_context_activation(false)
                    .with_filter(select),
            )
        }
        None => None,
    };
    let env_filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match format {
        LogFormat::Text => fmt.with_filter(env_filter).boxed(),
        LogFormat::Json => fmt.json().with_filter(env_filter).boxed(),
    };
    tracing_subscriber::registry().with(fmt).with(otel_layer).init();
    if let Some(c) = &resolved {
        tracing::info!(endpoint = %without_userinfo(&c.endpoint), protocol = ?c.protocol, service = %c.service_name, sampler = %c.sampler, sampler_arg = ?c.sampler_arg, "exporting traces over OTLP");
    }
    Ok(installed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned())
    }

    #[test]
    fn userinfo_never_reaches_a_log_line_or_an_error() {
        assert_eq!(without_userinfo("http://user:tok@c:4318/v1/traces"), "http://***@c:4318/v1/traces");
        assert_eq!(without_userinfo("http://c:4318/a@b"), "http://c:4318/a@b");
        assert_eq!(without_userinfo("grpc://c:4317"), "grpc://c:4317");
        let err = resolve(None, &env_of(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "https://u:s3cret@c:4318")]))
            .unwrap_err()
            .to_string();
        assert!(!err.contains("s3cret") && err.contains("***@c:4318"), "{err}");
        let err = resolve(None, &env_of(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "ftp://u:s3cret@c")])).unwrap_err();
        assert!(!err.to_string().contains("s3cret"), "{err}");
    }

    #[test]
    fn no_endpoint_means_off() {
        assert_eq!(resolve(None, &env_of(&[])).unwrap(), None);
        assert_eq!(
            resolve(Some(FileSettings::default()), &env_of(&[("OTEL_SERVICE_NAME", "x")])).unwrap(),
            None
        );
    }

    #[test]
    fn env_endpoint_gets_the_signal_path_for_http_only() {
        let c =
            resolve(None, &env_of(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/")])).unwrap().unwrap();
        assert_eq!(c.endpoint, "http://c:4318/v1/traces");
        assert_eq!(c.protocol, OtlpProtocol::HttpProtobuf);
        let c = resolve(
            None,
            &env_of(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ]),
        )
        .unwrap()
        .unwrap();
        assert_eq!((c.endpoint.as_str(), c.protocol), ("http://c:4317", OtlpProtocol::Grpc));
        let c = resolve(None, &env_of(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c/custom")]))
            .unwrap()
            .unwrap();
        assert_eq!(c.endpoint, "http://c/custom");
    }

    #[test]
    fn env_overrides_file_and_file_overrides_defaults() {
        let file = parse_settings(
            r#"
            [telemetry]
            endpoint = "http://file:4317"
            protocol = "grpc"
            service_name = "from-file"
            sampler = "parentbased_traceidratio"
            sampler_arg = 0.25
            resource_attributes = { "deployment.environment" = "test", team = "cache" }
            max_queue_size = 100
            "#,
        )
        .unwrap();
        let c = resolve(Some(file.clone()), &env_of(&[])).unwrap().unwrap();
        assert_eq!(c.endpoint, "http://file:4317");
        assert_eq!(c.service_name, "from-file");
        assert_eq!(c.sampler_arg, Some(0.25));
        assert_eq!(c.batch.max_queue_size, 100);
        assert_eq!(c.resource_attributes.get("team").map(String::as_str), Some("cache"));
        let c = resolve(
            Some(file),
            &env_of(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env:4317"),
                ("OTEL_SERVICE_NAME", "from-env"),
                ("OTEL_TRACES_SAMPLER_ARG", "0.01"),
                ("OTEL_RESOURCE_ATTRIBUTES", "team=search%20infra,region=eu"),
            ]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(c.endpoint, "http://env:4317");
        assert_eq!(c.service_name, "from-env");
        assert_eq!(c.sampler_arg, Some(0.01));
        assert_eq!(c.resource_attributes.get("team").map(String::as_str), Some("search infra"));
        assert_eq!(c.resource_attributes.get("region").map(String::as_str), Some("eu"));
    }

    #[test]
    fn disabled_switches_and_bad_values() {
        let on = &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"), ("OTEL_SDK_DISABLED", "true")];
        assert_eq!(resolve(None, &env_of(on)).unwrap(), None);
        assert!(resolve(
            None,
            &env_of(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"), ("OTEL_TRACES_SAMPLER", "nope")])
        )
        .is_err());
        assert!(resolve(
            None,
            &env_of(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
            ])
        )
        .is_err());
        assert!(resolve(None, &env_of(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c:4318")])).is_err());
        let err = parse_settings("[telemetry]\nendpont = \"x\"\n").unwrap_err().to_string();
        assert!(err.contains("did you mean `endpoint`"), "{err}");
        assert!(parse_settings("name = \"x\"\n").is_err());
    }
}
