//! The error printer every command ends with: `error:`, `caused by:`, `hint:`.

use batou_core::ConfigError;

use crate::{Exit, ExitError};

/// Prints `error:`, one `caused by:` per cause and `hint:`; in JSON mode also an event line.
pub fn print_error(err: &anyhow::Error, json: bool) {
    let hint = err
        .chain()
        .find_map(|e| {
            e.downcast_ref::<ConfigError>()
                .or_else(|| e.downcast_ref::<ExitError>().map(|x| &x.error))
        })
        .and_then(|c| c.hint.clone());
    let chain: Vec<String> = err.chain().map(|e| e.to_string()).collect();
    if json {
        let event = batou_core::output::error_event(
            Exit::of_error(err).name(),
            chain.clone(),
            hint.clone(),
        );
        batou_core::output::write_json(&mut std::io::stdout(), event);
    }
    let mut text = String::new();
    for (i, cause) in chain.iter().enumerate() {
        let label = if i == 0 { "error" } else { "caused by" };
        let mut lines = cause.lines();
        text.push_str(&format!("{label}: {}\n", lines.next().unwrap_or_default()));
        for line in lines {
            text.push_str(&format!("  {line}\n"));
        }
    }
    if let Some(hint) = hint {
        text.push_str(&format!("hint: {hint}\n"));
    }
    eprint!("{}", batou_core::redact::mask(&text));
}
