//! The JSON lines `--json` prints: one type per event, so what a script reads
//! is declared once, and a test holds the README's table of events to it.

use serde::{Serialize, Serializer};

use super::Moved;
use crate::protocol::path::PathReport;

/// Declares the `Event` enum over the event structs, each a variant of the same
/// name, and the `From` impls that let `Ui::event` take a struct as it is.
macro_rules! events {
    ($($(#[$variant_attr:meta])* $variant:ident,)*) => {
        /// One JSON line: an event's keys with its name under `event`.
        #[derive(Debug, Serialize)]
        #[serde(tag = "event", rename_all = "snake_case")]
        pub enum Event {
            $($(#[$variant_attr])* $variant($variant),)*
        }

        $(impl From<$variant> for Event {
            fn from(event: $variant) -> Event {
                Event::$variant(event)
            }
        })*
    };
}

events! {
    Listening,
    Received,
    Served,
    ReceiveFailed,
    ServeFailed,
    Refused,
    SendComplete,
    #[serde(rename = "file")]
    FileSent,
    FileFailed,
    Source,
    #[serde(rename = "file")]
    FilePulled,
    Summary,
    Tensor,
    #[serde(rename = "size")]
    BenchSize,
}

/// `listen`'s first line.
#[derive(Debug, Serialize)]
pub struct Listening {
    pub ticket: String,
    pub endpoint_id: String,
}

/// A listener stored a file a sender sent.
#[derive(Debug, Serialize)]
pub struct Received {
    /// The name it is stored under.
    pub name: String,
    pub sent_name: String,
    pub tensors: u64,
    pub bytes: u64,
    pub received_bytes: u64,
    #[serde(serialize_with = "three_decimals")]
    pub compression: f64,
    pub blake3: String,
    /// `--force` overwrote a file of that name.
    pub replaced: bool,
    pub peer: String,
    pub seconds: f64,
    pub mb_per_s: f64,
}

/// A listener served a file to a puller.
#[derive(Debug, Serialize)]
pub struct Served {
    pub name: String,
    pub bytes: u64,
    pub peer: String,
    pub seconds: f64,
    pub mb_per_s: f64,
}

#[derive(Debug, Serialize)]
pub struct ReceiveFailed {
    pub peer: String,
    pub error: String,
}

#[derive(Debug, Serialize)]
pub struct ServeFailed {
    pub peer: String,
    pub error: String,
}

/// A peer not on the `--allow` list tried to connect.
#[derive(Debug, Serialize)]
pub struct Refused {
    pub peer: String,
}

/// A sender finished and every file it sent was stored.
#[derive(Debug, Serialize)]
pub struct SendComplete {
    pub peer: String,
    pub files: u64,
}

/// `send` stored a file on one listener.
#[derive(Debug, Serialize)]
pub struct FileSent {
    pub name: String,
    pub stored_as: String,
    pub peer: String,
    pub tensors: u64,
    pub bytes: u64,
    pub sent_bytes: u64,
    #[serde(serialize_with = "three_decimals")]
    pub compression: f64,
    pub moved: Moved,
    pub blake3: String,
    pub seconds: f64,
    pub mb_per_s: f64,
    pub path: Option<PathReport>,
}

/// `send` failed to store a file on one listener.
#[derive(Debug, Serialize)]
pub struct FileFailed {
    pub name: String,
    pub peer: String,
    pub error: String,
}

/// What one source of a file `pull` fetched from several did; before the
/// file's event.
#[derive(Debug, Serialize)]
pub struct Source {
    pub name: String,
    pub peer: String,
    /// File bytes it delivered, checked.
    pub bytes: u64,
    pub chunks: u64,
    pub seconds: f64,
    pub mb_per_s: f64,
    /// Why it was retired or not used for the file.
    pub error: Option<String>,
}

/// `pull` stored a file.
#[derive(Debug, Serialize)]
pub struct FilePulled {
    pub name: String,
    pub stored_as: String,
    pub tensors: u64,
    pub bytes: u64,
    pub sent_bytes: u64,
    #[serde(serialize_with = "three_decimals")]
    pub compression: f64,
    pub moved: Moved,
    pub blake3: String,
    pub replaced: bool,
    pub seconds: f64,
    pub mb_per_s: f64,
    pub path: Option<PathReport>,
}

/// The last line of a `send` or `pull`, also of one that fails or is stopped.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub files: u64,
    pub failed: usize,
    pub bytes: u64,
    pub sent_bytes: u64,
    #[serde(serialize_with = "three_decimals")]
    pub compression: f64,
    pub seconds: f64,
    pub mb_per_s: f64,
    /// Why the command fails; `null` when it does not.
    pub error: Option<String>,
    /// The first peer's path, for the common case of one listener.
    pub path: Option<PathReport>,
    /// One per listener, in ticket order.
    pub paths: Vec<PathToPeer>,
}

#[derive(Debug, Serialize)]
pub struct PathToPeer {
    pub peer: String,
    pub path: Option<PathReport>,
}

/// A tensor `pull --list` found.
#[derive(Debug, Serialize)]
pub struct Tensor {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<u64>,
    pub bytes: u64,
    pub file: String,
}

/// A row of `bench`: one transfer size; the run-wide figures repeat on each.
#[derive(Debug, Serialize)]
pub struct BenchSize {
    pub size_bytes: u64,
    pub iters: usize,
    pub p50_us: f64,
    pub p99_us: f64,
    pub mb_per_s: f64,
    pub connect_ms: f64,
    pub tensors_per_s: f64,
    pub raw: bool,
    #[serde(serialize_with = "three_decimals")]
    pub compression: f64,
    pub path: Option<PathReport>,
}

/// A ratio to three decimals: more digits would only be noise.
fn three_decimals<S: Serializer>(ratio: &f64, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64((ratio * 1000.0).round() / 1000.0)
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;

    /// The commands that print `event`. The match names every variant, so a new
    /// event cannot compile without being placed here, and then in `samples`.
    fn commands_printing(event: &Event) -> &'static [&'static str] {
        match event {
            Event::Listening(_)
            | Event::Received(_)
            | Event::Served(_)
            | Event::ReceiveFailed(_)
            | Event::ServeFailed(_)
            | Event::Refused(_)
            | Event::SendComplete(_) => &["listen"],
            Event::FileSent(_) | Event::FileFailed(_) => &["send"],
            Event::Source(_) | Event::FilePulled(_) => &["pull"],
            Event::Summary(_) => &["send", "pull"],
            Event::Tensor(_) => &["pull --list"],
            Event::BenchSize(_) => &["bench"],
        }
    }

    fn samples() -> Vec<Event> {
        let text = String::new;
        vec![
            Listening {
                ticket: text(),
                endpoint_id: text(),
            }
            .into(),
            Received {
                name: text(),
                sent_name: text(),
                tensors: 0,
                bytes: 0,
                received_bytes: 0,
                compression: 1.0,
                blake3: text(),
                replaced: false,
                peer: text(),
                seconds: 0.0,
                mb_per_s: 0.0,
            }
            .into(),
            Served {
                name: text(),
                bytes: 0,
                peer: text(),
                seconds: 0.0,
                mb_per_s: 0.0,
            }
            .into(),
            ReceiveFailed {
                peer: text(),
                error: text(),
            }
            .into(),
            ServeFailed {
                peer: text(),
                error: text(),
            }
            .into(),
            Refused { peer: text() }.into(),
            SendComplete {
                peer: text(),
                files: 0,
            }
            .into(),
            FileSent {
                name: text(),
                stored_as: text(),
                peer: text(),
                tensors: 0,
                bytes: 0,
                sent_bytes: 0,
                compression: 1.0,
                moved: Moved::All,
                blake3: text(),
                seconds: 0.0,
                mb_per_s: 0.0,
                path: None,
            }
            .into(),
            FileFailed {
                name: text(),
                peer: text(),
                error: text(),
            }
            .into(),
            Source {
                name: text(),
                peer: text(),
                bytes: 0,
                chunks: 0,
                seconds: 0.0,
                mb_per_s: 0.0,
                error: None,
            }
            .into(),
            FilePulled {
                name: text(),
                stored_as: text(),
                tensors: 0,
                bytes: 0,
                sent_bytes: 0,
                compression: 1.0,
                moved: Moved::All,
                blake3: text(),
                replaced: false,
                seconds: 0.0,
                mb_per_s: 0.0,
                path: None,
            }
            .into(),
            Summary {
                files: 0,
                failed: 0,
                bytes: 0,
                sent_bytes: 0,
                compression: 1.0,
                seconds: 0.0,
                mb_per_s: 0.0,
                error: None,
                path: None,
                paths: Vec::new(),
            }
            .into(),
            Tensor {
                name: text(),
                dtype: text(),
                shape: Vec::new(),
                bytes: 0,
                file: text(),
            }
            .into(),
            BenchSize {
                size_bytes: 0,
                iters: 0,
                p50_us: 0.0,
                p99_us: 0.0,
                mb_per_s: 0.0,
                connect_ms: 0.0,
                tensors_per_s: 0.0,
                raw: false,
                compression: 1.0,
                path: None,
            }
            .into(),
        ]
    }

    /// (command, event) to the event's keys, `event` itself left out.
    type KeysByEvent = BTreeMap<(String, String), BTreeSet<String>>;

    fn printed() -> KeysByEvent {
        let mut printed = KeysByEvent::new();
        for sample in samples() {
            let serde_json::Value::Object(mut object) = serde_json::to_value(&sample).unwrap()
            else {
                panic!("{sample:?} is not a JSON object");
            };
            let name = object
                .remove("event")
                .unwrap()
                .as_str()
                .unwrap()
                .to_string();
            let keys: BTreeSet<String> = object.keys().cloned().collect();
            for command in commands_printing(&sample) {
                let earlier = printed.insert((command.to_string(), name.clone()), keys.clone());
                assert!(earlier.is_none(), "{command} prints two kinds of {name}");
            }
        }
        printed
    }

    /// The table under "## JSON output" in the README. A cell names commands,
    /// events or keys in backticks; parentheses explain, and their backticks
    /// name no key.
    fn documented() -> KeysByEvent {
        let readme = include_str!("../../README.md");
        let (_, section) = readme
            .split_once("\n## JSON output\n")
            .expect("README has a JSON output section");
        let rows = section
            .lines()
            .skip_while(|line| !line.starts_with('|'))
            .take_while(|line| line.starts_with('|'))
            .skip(2);
        let mut documented = KeysByEvent::new();
        for row in rows {
            let cells: Vec<&str> = row.trim_matches('|').split('|').collect();
            let [commands, events, keys] = cells[..] else {
                panic!("a row of the JSON table is not command | event | keys: {row}");
            };
            let keys: BTreeSet<String> = backticked(keys).into_iter().collect();
            for command in backticked(commands) {
                for event in backticked(events) {
                    let earlier = documented.insert((command.clone(), event), keys.clone());
                    assert!(earlier.is_none(), "the table repeats a row: {row}");
                }
            }
        }
        documented
    }

    /// The words in backticks of `cell`, outside parentheses.
    fn backticked(cell: &str) -> Vec<String> {
        let mut outside = String::new();
        let mut depth = 0usize;
        for c in cell.chars() {
            match c {
                '(' => depth += 1,
                ')' => depth = depth.saturating_sub(1),
                _ if depth == 0 => outside.push(c),
                _ => {}
            }
        }
        outside
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn the_readme_table_lists_every_event_with_exactly_its_keys() {
        let printed = printed();
        let documented = documented();
        let mut wrong = Vec::new();
        for ((command, event), keys) in &printed {
            match documented.get(&(command.clone(), event.clone())) {
                None => wrong.push(format!("`{command}` `{event}` is missing")),
                Some(listed) if listed != keys => wrong.push(format!(
                    "`{command}` `{event}` lists {listed:?}, but its keys are {keys:?}"
                )),
                Some(_) => {}
            }
        }
        for (command, event) in documented.keys() {
            if !printed.contains_key(&(command.clone(), event.clone())) {
                wrong.push(format!(
                    "`{command}` `{event}` is listed, but nothing prints it"
                ));
            }
        }
        assert!(
            wrong.is_empty(),
            "the README's JSON table:\n{}",
            wrong.join("\n")
        );
    }

    #[test]
    fn a_compression_ratio_has_three_decimals() {
        let summary = Summary {
            files: 1,
            failed: 0,
            bytes: 3,
            sent_bytes: 2,
            compression: 2.0 / 3.0,
            seconds: 0.5,
            mb_per_s: 0.0,
            error: None,
            path: None,
            paths: Vec::new(),
        };
        let line = serde_json::to_value(Event::from(summary)).unwrap();
        assert_eq!(line["event"], "summary");
        assert_eq!(line["compression"], 0.667);
        assert_eq!(line["error"], serde_json::Value::Null);
    }
}
