//! `pulsegate pub` and `pulsegate sub`: the command-line face of `pulsegate-client`.
//!
//! `pub` publishes one JSON payload and prints the position the server
//! assigned, `{"topic":…,"seq":…,"epoch":…}`. `sub` prints one JSON line per
//! message on stdout, `{"topic","seq","epoch","ts","data"}`, so it can be piped
//! into `jq`; everything about the connection (subscribed, gaps, reconnects)
//! goes to stderr. Without `--resume` a disconnect ends `sub` with an error;
//! with it, `sub` reconnects with jittered backoff (honouring a draining
//! server's hint) and recovers the messages it missed.
//!
//! All logic lives in the client library; this file only maps arguments to
//! [`ClientOptions`] and events to output lines.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use pulsegate_client::{close_code_name, ClientOptions, Codec, Event, Subscriber};
use serde_json::Value;
use tokio::time::Instant;

const DEFAULT_URL: &str = "ws://127.0.0.1:8080/ws";

/// Arguments of `pulsegate pub`.
#[derive(Debug, Args)]
pub struct PubArgs {
    /// Concrete topic to publish to, e.g. `site/a/power`.
    pub topic: String,
    /// The payload as JSON text, e.g. '{"w":1520}'. A string needs its quotes: '"on"'.
    pub json: String,
    /// Server WebSocket URL (ws:// or wss://).
    #[arg(long, default_value = DEFAULT_URL)]
    pub url: String,
    /// Speak MessagePack (`pulsegate.v1.msgpack`) instead of JSON.
    #[arg(long)]
    pub msgpack: bool,
    /// Also trust the CA certificate(s) in this PEM file (wss:// with a self-signed certificate).
    #[arg(long, value_name = "PEM")]
    pub ca_file: Option<PathBuf>,
}

/// Arguments of `pulsegate sub`.
#[derive(Debug, Args)]
pub struct SubArgs {
    /// Topic pattern: `+` matches one level, a final `#` any rest, e.g. `site/+/power`.
    pub pattern: String,
    /// Server WebSocket URL (ws:// or wss://).
    #[arg(long, default_value = DEFAULT_URL)]
    pub url: String,
    /// Another node of the same cluster to reconnect to (repeatable): with
    /// --resume, each reconnect tries the next URL in turn and recovers there.
    #[arg(long = "fallback-url", value_name = "URL")]
    pub fallback_urls: Vec<String>,
    /// Reconnect after a disconnect and recover the messages missed meanwhile
    /// (without it, a disconnect ends the command with an error).
    #[arg(long)]
    pub resume: bool,
    /// Start with the last value of every matching topic.
    #[arg(long)]
    pub snapshot: bool,
    /// Exit after printing N messages.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// Stop after this long, e.g. `30s` or `5m`. With --count, fewer than N
    /// messages by then is an error; without it, the command ends successfully.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub timeout: Option<Duration>,
    /// Speak MessagePack (`pulsegate.v1.msgpack`) instead of JSON.
    #[arg(long)]
    pub msgpack: bool,
    /// Also trust the CA certificate(s) in this PEM file (wss:// with a self-signed certificate).
    #[arg(long, value_name = "PEM")]
    pub ca_file: Option<PathBuf>,
}

/// Publishes one message and prints `{"topic":…,"seq":…,"epoch":…}`.
pub async fn run_pub(args: PubArgs) -> anyhow::Result<()> {
    let data = parse_payload(&args.json)?;
    let opts = client_options(&args.url, args.msgpack, args.ca_file.as_deref())?;
    let reply = pulsegate_client::publish(&opts, &args.topic, data)
        .await
        .with_context(|| format!("publishing to `{}` via {}", args.topic, args.url))?;
    println!(
        "{{\"topic\":{},\"seq\":{},\"epoch\":{}}}",
        Value::from(reply.topic),
        reply.seq,
        Value::from(reply.epoch)
    );
    Ok(())
}

/// Subscribes and prints one JSON line per message until `--count`,
/// `--timeout`, Ctrl-C, or (without `--resume`) a disconnect.
pub async fn run_sub(args: SubArgs) -> anyhow::Result<()> {
    let mut opts = client_options(&args.url, args.msgpack, args.ca_file.as_deref())?;
    for url in &args.fallback_urls {
        opts = opts.fallback_url(url);
    }
    let mut sub = Subscriber::new(opts, args.pattern.clone(), args.snapshot, args.resume);
    let deadline = args.timeout.map(|t| Instant::now() + t);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut stdout = std::io::stdout();
    let mut printed: u64 = 0;
    let mut ever_subscribed = false;

    loop {
        let event = tokio::select! {
            event = sub.next() => event.with_context(|| {
                format!("subscription to `{}` at {} ended", args.pattern, args.url)
            })?,
            () = sleep_until(deadline) => {
                sub.close().await;
                return match args.count {
                    Some(n) if printed < n => bail!(
                        "timed out after {} with {printed} of {n} messages",
                        humantime::format_duration(args.timeout.unwrap_or_default())
                    ),
                    _ => Ok(()),
                };
            }
            _ = &mut ctrl_c => {
                sub.close().await;
                return Ok(());
            }
        };
        match event {
            Event::Msg {
                topic,
                seq,
                epoch,
                ts,
                data,
            } => {
                let line = msg_line(topic, seq, epoch, ts, &data);
                if let Err(e) = writeln!(stdout, "{line}") {
                    sub.close().await;
                    // A closed pipe (`| head -n 3`) is a normal way to stop.
                    if e.kind() == std::io::ErrorKind::BrokenPipe {
                        return Ok(());
                    }
                    return Err(e).context("writing to stdout");
                }
                printed += 1;
                if args.count.is_some_and(|n| printed >= n) {
                    sub.close().await;
                    return Ok(());
                }
            }
            Event::Subscribed {
                recovered,
                not_recovered,
            } => {
                ever_subscribed = true;
                let mut status = format!("pulsegate sub: subscribed to `{}`", args.pattern);
                if !recovered.is_empty() {
                    status.push_str(&format!("; recovered {}", recovered.join(", ")));
                }
                if !not_recovered.is_empty() {
                    status.push_str(&format!(
                        "; NOT recovered (history lost, resync): {}",
                        not_recovered.join(", ")
                    ));
                }
                eprintln!("{status}");
            }
            Event::Gap {
                topic,
                expected,
                got,
            } => {
                eprintln!(
                    "pulsegate sub: gap on `{topic}`: seq {expected}..{} never arrived",
                    got.saturating_sub(1)
                );
            }
            Event::Disconnected {
                code,
                reason,
                retry_in,
            } => {
                let what = describe_disconnect(code, &reason);
                if !args.resume {
                    if ever_subscribed {
                        bail!("disconnected from {}: {what} (pass --resume to reconnect and recover missed messages)", args.url);
                    }
                    bail!("could not subscribe at {}: {what}", args.url);
                }
                let retry_in = Duration::from_millis(retry_in.as_millis() as u64);
                eprintln!(
                    "pulsegate sub: disconnected ({what}); reconnecting in {}",
                    humantime::format_duration(retry_in)
                );
            }
            other => tracing::debug!(?other, "unhandled subscriber event"),
        }
    }
}

fn parse_payload(json: &str) -> anyhow::Result<Value> {
    serde_json::from_str(json).with_context(|| {
        let shown: String = json.chars().take(80).collect();
        let ellipsis = if json.chars().count() > 80 { "…" } else { "" };
        format!(
            "the payload `{shown}{ellipsis}` is not valid JSON; \
             write objects as '{{\"w\":1520}}', strings with their quotes as '\"on\"'"
        )
    })
}

fn client_options(
    url: &str,
    msgpack: bool,
    ca_file: Option<&Path>,
) -> anyhow::Result<ClientOptions> {
    let codec = if msgpack { Codec::MsgPack } else { Codec::Json };
    let mut opts = ClientOptions::new(url).codec(codec);
    if let Some(path) = ca_file {
        opts = opts.add_root_ca_pem_file(path)?;
    }
    Ok(opts)
}

fn msg_line(topic: String, seq: u64, epoch: String, ts: u64, data: &Value) -> String {
    // Written by hand to keep this field order (serde_json sorts object keys).
    format!(
        "{{\"topic\":{},\"seq\":{seq},\"epoch\":{},\"ts\":{ts},\"data\":{data}}}",
        Value::from(topic),
        Value::from(epoch)
    )
}

fn describe_disconnect(code: Option<u16>, reason: &str) -> String {
    match (code, reason.is_empty()) {
        (Some(c), true) => format!("close code {c}, {}", close_code_name(c)),
        (Some(c), false) => format!("close code {c}, {}: {reason}", close_code_name(c)),
        (None, _) => reason.to_string(),
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    enum TestCli {
        Pub(PubArgs),
        Sub(SubArgs),
    }

    #[test]
    fn pub_args_and_defaults() {
        let TestCli::Pub(args) =
            TestCli::try_parse_from(["t", "pub", "site/a/power", r#"{"w":1520}"#, "--msgpack"])
                .unwrap()
        else {
            panic!()
        };
        assert_eq!(args.topic, "site/a/power");
        assert_eq!(args.url, "ws://127.0.0.1:8080/ws");
        assert!(args.msgpack);
    }

    #[test]
    fn sub_args_parse_durations_and_counts() {
        let TestCli::Sub(args) = TestCli::try_parse_from([
            "t",
            "sub",
            "site/#",
            "--resume",
            "--count",
            "3",
            "--timeout",
            "1m 30s",
        ])
        .unwrap() else {
            panic!()
        };
        assert_eq!(args.count, Some(3));
        assert_eq!(args.timeout, Some(Duration::from_secs(90)));
        assert!(args.resume && !args.snapshot);
        assert!(TestCli::try_parse_from(["t", "sub", "a", "--count", "0"]).is_err());
        assert!(TestCli::try_parse_from(["t", "sub", "a", "--timeout", "soon"]).is_err());
    }

    #[test]
    fn invalid_json_is_explained() {
        let e = parse_payload("{w:1}").unwrap_err();
        let text = format!("{e:#}");
        assert!(text.contains("is not valid JSON"), "{text}");
        assert!(text.contains("key must be a string"), "{text}");
        assert_eq!(parse_payload("\"on\"").unwrap(), Value::from("on"));
        assert!(parse_payload("on").is_err());
    }

    #[tokio::test]
    async fn pub_with_invalid_json_fails_before_connecting() {
        let e = run_pub(PubArgs {
            topic: "a/b".into(),
            json: "not json".into(),
            url: "ws://127.0.0.1:1/ws".into(),
            msgpack: false,
            ca_file: None,
        })
        .await
        .unwrap_err();
        assert!(e.to_string().contains("is not valid JSON"), "{e:#}");
    }

    #[tokio::test]
    async fn sub_without_resume_fails_on_a_dead_server() {
        let url = {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            format!("ws://{}/ws", l.local_addr().unwrap())
        };
        let e = run_sub(SubArgs {
            pattern: "a/#".into(),
            url: url.clone(),
            fallback_urls: Vec::new(),
            resume: false,
            snapshot: false,
            count: None,
            timeout: Some(Duration::from_secs(5)),
            msgpack: false,
            ca_file: None,
        })
        .await
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("could not subscribe at ws://127.0.0.1:"),
            "{e:#}"
        );
    }

    #[test]
    fn output_lines_keep_field_order() {
        let line = msg_line(
            "site/\"a\"/power".into(),
            42,
            "E".into(),
            7,
            &serde_json::json!({"w": 1520}),
        );
        assert_eq!(
            line,
            r#"{"topic":"site/\"a\"/power","seq":42,"epoch":"E","ts":7,"data":{"w":1520}}"#
        );
        assert_eq!(
            describe_disconnect(Some(4000), ""),
            "close code 4000, slow consumer"
        );
        assert_eq!(
            describe_disconnect(Some(1001), "draining; reconnect_after_ms=5"),
            "close code 1001, going away: draining; reconnect_after_ms=5"
        );
    }
}
