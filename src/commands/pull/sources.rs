//! A pull from several listeners: every source's catalog, one merged catalog
//! in which each name belongs to the first source serving it, and the other
//! sources of a whole file that serve it under the same name and size
//! (docs/protocol.md, "Several sources").

use anyhow::{Result, bail};
use futures_util::future::join_all;
use iroh::EndpointAddr;

use crate::protocol::client;
use crate::protocol::pool::Pool;
use crate::protocol::sources::worth_several_sources;
use crate::protocol::wire::CatalogFile;
use crate::ui::Ui;
use crate::ui::errors::describe;

/// The sources of a pull and what each serves, in ticket order.
pub struct Served {
    sources: Vec<(EndpointAddr, Vec<CatalogFile>)>,
}

impl Served {
    /// Asks every source for its catalog. A source that cannot say is left
    /// out with a warning, unless it is the only one or none can say: then
    /// the pull fails as before.
    pub async fn ask(pool: &Pool, addrs: &[EndpointAddr], ui: &Ui) -> Result<Served> {
        let answers = join_all(addrs.iter().map(|addr| client::catalog(pool, addr))).await;
        let mut sources = Vec::new();
        let mut first_error = None;
        for (addr, answer) in addrs.iter().zip(answers) {
            match answer {
                Ok(catalog) => sources.push((addr.clone(), catalog)),
                Err(err) if addrs.len() > 1 => {
                    ui.warn(format!(
                        "source {} is left out: {}",
                        addr.id.fmt_short(),
                        describe(&err)
                    ));
                    first_error.get_or_insert(err);
                }
                Err(err) => return Err(err),
            }
        }
        if sources.is_empty() {
            bail!(
                first_error
                    .expect("a source failed")
                    .context("no source could list its files")
            );
        }
        Ok(Served { sources })
    }

    /// One catalog of every name served, each from the first source serving
    /// it, with that source.
    pub fn merged(&self) -> (Vec<CatalogFile>, Vec<EndpointAddr>) {
        let mut files: Vec<CatalogFile> = Vec::new();
        let mut origins = Vec::new();
        for (addr, catalog) in &self.sources {
            for file in catalog {
                if !files.iter().any(|seen| seen.name == file.name) {
                    files.push(file.clone());
                    origins.push(addr.clone());
                }
            }
        }
        (files, origins)
    }

    /// The sources of `file` wanted whole: `first`, where it is its only one
    /// or the file is too small to divide, else every source serving a file
    /// of its name and size, in ticket order (whether it is the same file,
    /// their hash lists tell).
    pub fn of_whole(&self, file: &CatalogFile, first: &EndpointAddr) -> Vec<EndpointAddr> {
        if !worth_several_sources(file.size) {
            return vec![first.clone()];
        }
        self.sources
            .iter()
            .filter(|(_, catalog)| {
                catalog
                    .iter()
                    .any(|theirs| theirs.name == file.name && theirs.size == file.size)
            })
            .map(|(addr, _)| addr.clone())
            .collect()
    }
}
