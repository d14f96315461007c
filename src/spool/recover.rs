//! Recovery at open: what a crash can leave in the spool's directories,
//! and what becomes of it (see `store.rs` for why each case is safe).

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::store::{Recovery, Slot, SlotRef};
use super::{fsio, Envelope, SpoolError, SpoolId};

/// The spool's directories, and the recovery done at open.
#[derive(Debug)]
pub(super) struct Layout {
    pub(super) tmp: PathBuf,
    pub(super) msg: PathBuf,
    pub(super) env: PathBuf,
    pub(super) corrupt: PathBuf,
}

pub(super) type Index = BTreeMap<SpoolId, SlotRef>;

impl Layout {
    /// Deletes every leftover in `tmp/`: unfinished writes, never part of
    /// the spool.
    pub(super) fn clear_tmp(&self) -> Result<usize, SpoolError> {
        let mut removed = 0;
        for entry in read_dir(&self.tmp)? {
            let path = entry.path();
            fs::remove_file(&path).map_err(SpoolError::io("remove", &path))?;
            tracing::info!(path = %path.display(), "spool: removed an unfinished write");
            removed += 1;
        }
        if removed > 0 {
            fsio::sync_dir(&self.tmp)?;
        }
        Ok(removed)
    }

    /// Loads every envelope whose data is sound, deletes data without an
    /// envelope, and returns the index with the highest id on disk.
    pub(super) fn load_index(
        &self,
        recovery: &mut Recovery,
    ) -> Result<(Index, Option<SpoolId>), SpoolError> {
        let mut highest = None;
        let mut index = BTreeMap::new();
        for entry in read_dir(&self.env)? {
            let Some(id) = spool_id(&entry.path()) else {
                continue;
            };
            highest = highest.max(Some(id));
            match self.check_entry(id)? {
                Some(env) => {
                    index.insert(id, Arc::new(Mutex::new(Slot { env, gone: false })));
                }
                None => recovery.quarantined += 1,
            }
        }
        for entry in read_dir(&self.msg)? {
            let path = entry.path();
            let Some(id) = spool_id(&path) else {
                continue;
            };
            highest = highest.max(Some(id));
            if !index.contains_key(&id) {
                fs::remove_file(&path).map_err(SpoolError::io("remove", &path))?;
                tracing::info!(%id, "spool: removed data without an envelope");
                recovery.orphans_removed += 1;
            }
        }
        if recovery.orphans_removed > 0 {
            fsio::sync_dir(&self.msg)?;
        }
        Ok((index, highest))
    }

    /// Reads one envelope and checks its data file; a damaged entry is
    /// moved to `corrupt/` and `None` returned.
    fn check_entry(&self, id: SpoolId) -> Result<Option<Envelope>, SpoolError> {
        let env_path = self.env.join(id.to_string());
        let data_path = self.msg.join(id.to_string());
        let bytes = fs::read(&env_path).map_err(SpoolError::io("read", &env_path))?;
        let problem = match serde_json::from_slice::<Envelope>(&bytes) {
            Err(e) => format!("unreadable envelope: {e}"),
            Ok(env) => match fs::metadata(&data_path) {
                Ok(m) if m.len() == env.size => return Ok(Some(env)),
                Ok(m) => format!("data is {} bytes, envelope says {}", m.len(), env.size),
                Err(e) if e.kind() == io::ErrorKind::NotFound => "no data file".to_string(),
                Err(e) => return Err(SpoolError::io("stat", &data_path)(e)),
            },
        };
        tracing::error!(
            %id,
            %problem,
            dir = %self.corrupt.display(),
            "spool: damaged entry set aside"
        );
        self.quarantine(id)?;
        Ok(None)
    }

    /// Moves the files of `id` that exist into `corrupt/`.
    fn quarantine(&self, id: SpoolId) -> Result<(), SpoolError> {
        fs::create_dir_all(&self.corrupt)
            .map_err(SpoolError::io("create directory", &self.corrupt))?;
        for (dir, ext) in [(&self.msg, "msg"), (&self.env, "env")] {
            let from = dir.join(id.to_string());
            if from.exists() {
                fsio::rename_synced(&from, &self.corrupt.join(format!("{id}.{ext}")))?;
                fsio::sync_dir(dir)?;
            }
        }
        Ok(())
    }
}

fn read_dir(dir: &Path) -> Result<Vec<fs::DirEntry>, SpoolError> {
    fs::read_dir(dir)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(SpoolError::io("read directory", dir))
}

/// The id a spool file is named by; `None` (and a warning) for anything
/// else, which the spool leaves alone.
fn spool_id(path: &Path) -> Option<SpoolId> {
    let id = path.file_name()?.to_str()?.parse().ok();
    if id.is_none() {
        tracing::warn!(path = %path.display(), "spool: ignoring a file that is not a spool entry");
    }
    id
}
