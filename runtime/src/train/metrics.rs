//! Per-epoch metrics and the run's `metrics.csv`.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{TrainError, TrainResult};

/// What one epoch did and measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// 1-based: the number of epochs completed after this one.
    pub epoch: usize,
    /// 0-based progressive-learning stage.
    pub stage: usize,
    pub image_size: usize,
    pub randaug: f64,
    pub mixup: f64,
    pub cutmix: f64,
    pub dropout: f64,
    pub batch_size: usize,
    /// Learning rate of the epoch's last step.
    pub lr: f64,
    /// Mean training loss over the epoch's steps.
    pub train_loss: f64,
    /// Test accuracy (with the EMA weights when the schedule has `ema`), or None without a
    /// test set.
    pub test_top1: Option<f64>,
    pub test_top5: Option<f64>,
    /// Test top-1 of the raw (non-averaged) weights, when EMA is on.
    pub test_top1_raw: Option<f64>,
    pub train_images_per_sec: f64,
    /// Seconds for this epoch (training and evaluation).
    pub wall_s: f64,
    /// Seconds since the start of the run (summed over resumed sessions).
    pub elapsed_s: f64,
}

const HEADER: &str = "epoch,stage,image_size,randaug,mixup,cutmix,dropout,batch_size,lr,train_loss,test_top1,test_top5,test_top1_raw,train_images_per_sec,wall_s,elapsed_s";

fn opt(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.4}")).unwrap_or_default()
}

/// Write every epoch's metrics as CSV (temp file + rename).
pub fn write_csv(rows: &[EpochMetrics], path: &Path) -> TrainResult<()> {
    let io = |source: std::io::Error| TrainError::Io {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("csv.tmp");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(io)?);
        writeln!(f, "{HEADER}").map_err(io)?;
        for r in rows {
            writeln!(
                f,
                "{},{},{},{:.3},{:.3},{:.3},{:.4},{},{:.6e},{:.6},{},{},{},{:.1},{:.2},{:.2}",
                r.epoch,
                r.stage,
                r.image_size,
                r.randaug,
                r.mixup,
                r.cutmix,
                r.dropout,
                r.batch_size,
                r.lr,
                r.train_loss,
                opt(r.test_top1),
                opt(r.test_top5),
                opt(r.test_top1_raw),
                r.train_images_per_sec,
                r.wall_s,
                r.elapsed_s
            )
            .map_err(io)?;
        }
        f.flush().map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)
}
