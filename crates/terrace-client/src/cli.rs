//! The terminal front end: `terrace generate`, `terrace status`,
//! `terrace cancel`. One progress bar per area while a generation runs, then
//! the images saved to a folder.

use crate::{AreaSpec, Client, ClientError, CreateRequest, Generation, WatchError, WatchOptions};
use futures::StreamExt;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use terrace_domain::state::AreaStatus;
use terrace_domain::{AreaKind, Style};
use uuid::Uuid;

/// What a command can fail with.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Watch(#[from] WatchError),
    #[error("could not save an image: {0}")]
    Io(#[from] std::io::Error),
}

/// Parses `AREA:STYLE`, e.g. `front_yard:japanese_zen`.
pub fn parse_area(arg: &str) -> Result<AreaSpec, CliError> {
    let (area, style) = arg.split_once(':').ok_or_else(|| {
        CliError::Usage(format!("--area {arg}: expected AREA:STYLE, e.g. front_yard:japanese_zen"))
    })?;
    let area = AreaKind::parse(area).map_err(|e| CliError::Usage(format!("--area {arg}: {}", e.message)))?;
    let style = Style::parse(style).map_err(|e| CliError::Usage(format!("--area {arg}: {}", e.message)))?;
    Ok(AreaSpec::new(area, style))
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template("{prefix:>11} [{bar:30}] {pos:>3}% {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

fn describe(g: &Generation, area: AreaKind) -> (u64, String) {
    let Some(a) = g.areas.iter().find(|a| a.area == area) else { return (0, String::new()) };
    let msg = match (&a.status, &a.error) {
        (_, Some(e)) => format!("{}: {}", a.status.as_str(), e.code),
        (AreaStatus::Pending | AreaStatus::Processing, None) => a.stage.as_str().replace('_', " "),
        (s, None) => s.as_str().to_owned(),
    };
    (u64::from(a.progress), msg)
}

/// Creates a generation, shows its progress until it ends, and saves the
/// images of completed areas into `out_dir`. Returns the final generation.
pub async fn generate(
    client: &Client,
    address: String,
    areas: Vec<AreaSpec>,
    out_dir: &Path,
    options: WatchOptions,
) -> Result<Generation, CliError> {
    let kinds: Vec<AreaKind> = areas.iter().filter_map(AreaSpec::kind).collect();
    let created = client.create(&CreateRequest::new(address, areas)).await?;
    eprintln!("generation {} ({} credits held)", created.id, created.cost);
    let multi = MultiProgress::new();
    let bars: HashMap<AreaKind, ProgressBar> = kinds
        .iter()
        .map(|k| {
            let bar = multi.add(ProgressBar::new(100).with_style(bar_style()).with_prefix(k.as_str()));
            (*k, bar)
        })
        .collect();
    let mut last = created.clone();
    let mut watch = client.watch(created.id, options);
    while let Some(item) = watch.next().await {
        let g = item?;
        for (kind, bar) in &bars {
            let (pos, msg) = describe(&g, *kind);
            bar.set_position(pos);
            bar.set_message(msg);
        }
        last = g;
    }
    for bar in bars.values() {
        bar.finish();
    }
    save_images(client, &last, out_dir).await?;
    print_summary(&last);
    Ok(last)
}

async fn save_images(client: &Client, g: &Generation, out_dir: &Path) -> Result<Vec<PathBuf>, CliError> {
    let mut saved = Vec::new();
    for a in g.areas.iter().filter(|a| a.status == AreaStatus::Completed) {
        let (bytes, content_type) = client.image(g.id, a.area).await?;
        let ext = match content_type.as_str() {
            "image/png" => "png",
            "image/jpeg" => "jpg",
            "image/webp" => "webp",
            _ => "bin",
        };
        tokio::fs::create_dir_all(out_dir).await?;
        let path = out_dir.join(format!("{}-{}.{ext}", g.id, a.area));
        tokio::fs::write(&path, &bytes).await?;
        println!("saved {}", path.display());
        saved.push(path);
    }
    Ok(saved)
}

/// Prints a generation, one line per area.
pub fn print_summary(g: &Generation) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{} {} (captured {}, voided {})", g.id, g.status.as_str(), g.captured, g.voided);
    if let Some(e) = &g.error {
        let _ = writeln!(out, "  error: {} — {}", e.code, e.message);
    }
    for a in &g.areas {
        let what = a
            .error
            .as_ref()
            .map_or_else(|| a.stage.as_str().to_owned(), |e| format!("{}: {}", e.code, e.message));
        let _ =
            writeln!(out, "  {:<11} {:<10} {:>3}%  {}", a.area.as_str(), a.status.as_str(), a.progress, what);
    }
}

/// `terrace status ID`.
pub async fn status(client: &Client, id: Uuid) -> Result<Generation, CliError> {
    let g = client.get(id).await?;
    print_summary(&g);
    Ok(g)
}

/// `terrace cancel ID`.
pub async fn cancel(client: &Client, id: Uuid) -> Result<Generation, CliError> {
    let g = client.cancel(id).await?;
    print_summary(&g);
    Ok(g)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn area_arguments_parse_or_explain() {
        let a = parse_area("front_yard:japanese_zen").unwrap();
        assert_eq!(a, AreaSpec::new(AreaKind::FrontYard, Style::JapaneseZen));
        for bad in ["front_yard", "roof:japanese_zen", "patio:gothic"] {
            let e = parse_area(bad).unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
    }
}
