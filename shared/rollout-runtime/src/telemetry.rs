//! Logs and traces: one `tracing` subscriber per process, printing text or
//! JSON lines, and exporting spans over OTLP HTTP/protobuf when
//! `otlp.endpoint` is set; plus W3C trace context carried in NATS headers
//! and stored as `traceparent` strings (see [`inject_trace_context`],
//! [`set_remote_parent`] and [`traceparent_of_current_span`]).
//!
//! [`init_telemetry`] is called once near the top of `main`; the returned
//! [`TelemetryGuard`] is kept alive until the end and shut down last, so the
//! spans of the shutdown itself are exported too. Tests call
//! [`init_for_tests`] as often as they like.

mod propagation;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing::Subscriber;
use tracing_subscriber::filter::{filter_fn, EnvFilter};
use tracing_subscriber::layer::{Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{LogFormat, LogSettings, OtlpProtocol, OtlpSettings};

pub use propagation::{
    context_from_traceparent, extract_trace_context, inject_trace_context, link_to_traceparent,
    new_trace_id, new_traceparent, set_remote_parent, trace_id_of, traceparent_of_current_span,
    TRACEPARENT_HEADER, TRACESTATE_HEADER,
};

/// Why telemetry could not be set up or shut down.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// `log.level` is not a valid filter.
    #[error("log.level {level:?}: {message}")]
    Filter {
        /// The filter as configured.
        level: String,
        /// What is wrong with it.
        message: String,
    },
    /// The OTLP exporter could not be built.
    #[error("otlp exporter for {url}: {message}")]
    Exporter {
        /// Where spans would have been sent.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// A global `tracing` subscriber was already installed in this process.
    #[error("a tracing subscriber is already installed in this process")]
    AlreadyInitialized,
    /// Flushing or shutting down the span exporter failed.
    #[error("span export shutdown: {0}")]
    Shutdown(String),
}

/// Keeps span export running; flushes and stops it on [`shutdown`] or drop.
///
/// [`shutdown`]: TelemetryGuard::shutdown
#[derive(Debug)]
#[must_use = "dropping the guard stops span export"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Whether spans are exported (an OTLP endpoint was configured).
    pub fn is_exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Sends every finished span now, waiting for the export to complete.
    pub fn flush(&self) -> Result<(), TelemetryError> {
        match &self.provider {
            Some(provider) => provider
                .force_flush()
                .map_err(|error| TelemetryError::Shutdown(error.to_string())),
            None => Ok(()),
        }
    }

    /// Flushes the spans still buffered and stops the exporter.
    ///
    /// Blocks the calling thread for at most the export timeout; call it
    /// last, after the service's own shutdown.
    pub fn shutdown(mut self) -> Result<(), TelemetryError> {
        match self.provider.take() {
            Some(provider) => provider
                .shutdown()
                .map_err(|error| TelemetryError::Shutdown(error.to_string())),
            None => Ok(()),
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            // nowhere left to report a failure to but stderr, and the
            // provider already logs it through its internal logs
            let _ = provider.shutdown();
        }
    }
}

/// Installs the process-wide `tracing` subscriber: an [`EnvFilter`] from
/// `log.level`, a text or JSON formatter on stdout, and, when
/// `otlp.endpoint` is set, an OpenTelemetry layer exporting spans in batches
/// to `<endpoint>/v1/traces` over HTTP/protobuf.
///
/// The spans get `service.name` = `otlp.service_name`, or `service_name`
/// when unset. Fails if a subscriber is already installed.
pub fn init_telemetry(
    service_name: &str,
    log: &LogSettings,
    otlp: &OtlpSettings,
) -> Result<TelemetryGuard, TelemetryError> {
    let filter = EnvFilter::try_new(&log.level).map_err(|error| TelemetryError::Filter {
        level: log.level.clone(),
        message: error.to_string(),
    })?;
    let service_name = otlp.service_name.as_deref().unwrap_or(service_name);
    let provider = match otlp.traces_url() {
        Some(url) => Some(span_provider(service_name, &url, otlp)?),
        None => None,
    };

    let mut layers = vec![fmt_layer(log.format)];
    if let Some(provider) = &provider {
        layers.push(otel_layer(provider, service_name));
    }
    tracing_subscriber::registry()
        .with(filter)
        .with(layers)
        .try_init()
        .map_err(|_| TelemetryError::AlreadyInitialized)?;
    if let Some(provider) = &provider {
        opentelemetry::global::set_tracer_provider(provider.clone());
    }
    Ok(TelemetryGuard { provider })
}

/// Installs a subscriber for tests: text written through the test harness's
/// capture, filtered by `RUST_LOG` (default `warn`). Calling it again, or
/// after another subscriber was installed, does nothing.
pub fn init_for_tests() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    // the error only says a subscriber is already installed, which is fine
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// Builds a tracer provider exporting to `traces_url` over OTLP HTTP/protobuf
/// with a batch processor, for callers that assemble their own subscriber.
pub fn span_provider(
    service_name: &str,
    traces_url: &str,
    otlp: &OtlpSettings,
) -> Result<SdkTracerProvider, TelemetryError> {
    let protocol = match otlp.protocol {
        OtlpProtocol::HttpProtobuf => Protocol::HttpBinary,
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(protocol)
        .with_endpoint(traces_url)
        .with_timeout(otlp.export_timeout)
        .build()
        .map_err(|error| TelemetryError::Exporter {
            url: traces_url.to_owned(),
            message: error.to_string(),
        })?;
    let resource = Resource::builder()
        .with_service_name(service_name.to_owned())
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// The OpenTelemetry layer for `provider`, ready to add to a registry.
///
/// It skips the spans and events of the export machinery itself (the HTTP
/// client and the OpenTelemetry SDK): at `debug` they would otherwise be
/// exported, producing more of themselves.
pub fn otel_layer<S>(
    provider: &SdkTracerProvider,
    service_name: &str,
) -> Box<dyn Layer<S> + Send + Sync + 'static>
where
    S: Subscriber + for<'span> LookupSpan<'span> + Send + Sync,
{
    let tracer = provider.tracer(service_name.to_owned());
    tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(filter_fn(|metadata| {
            !is_export_machinery(metadata.target())
        }))
        .boxed()
}

fn fmt_layer<S>(format: LogFormat) -> Box<dyn Layer<S> + Send + Sync + 'static>
where
    S: Subscriber + for<'span> LookupSpan<'span> + Send + Sync,
{
    match format {
        // colours only on a terminal: a log redirected to a file stays plain text
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
    }
}

const EXPORT_MACHINERY_TARGETS: [&str; 7] = [
    "opentelemetry",
    "hyper",
    "hyper_util",
    "h2",
    "reqwest",
    "tower",
    "rustls",
];

fn is_export_machinery(target: &str) -> bool {
    EXPORT_MACHINERY_TARGETS.iter().any(|prefix| {
        target
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with("::") || rest.starts_with('_'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_machinery_targets_are_recognised() {
        assert!(is_export_machinery("hyper_util::client::legacy"));
        assert!(is_export_machinery("h2::codec"));
        assert!(is_export_machinery("opentelemetry_sdk"));
        assert!(is_export_machinery("reqwest"));
        assert!(!is_export_machinery("rollout_ticker"));
        assert!(!is_export_machinery("h2o"));
    }

    #[test]
    fn init_for_tests_can_be_called_twice() {
        init_for_tests();
        init_for_tests();
        tracing::info!("still fine");
    }

    #[test]
    fn bad_filter_is_reported() {
        let log = LogSettings {
            level: "info,rollout=loud".to_owned(),
            ..LogSettings::default()
        };
        // fails on the filter before trying to install anything
        let result = init_telemetry("test", &log, &OtlpSettings::default());
        assert!(
            matches!(result, Err(TelemetryError::Filter { .. })),
            "{result:?}"
        );
    }
}
