//! Where an inference's time goes: the forward walk of any plan, each layer operation timed
//! to the device's completion and summed by what it is (a depthwise 3x3 at stride 2, a 1x1
//! GEMM, a dense 3x3 on patches, a squeeze-excitation, ...): `effnet bench --profile`.
//!
//! Each operation is followed by a synchronization of the device (a no-op on the CPU), so on
//! a GPU the walk runs one operation at a time, without the overlap of launches with
//! compute: the per-operation figures add up to more than an unprofiled call takes, and are
//! for finding the largest shares, not for the throughput (which `bench` measures without).

use std::collections::HashMap;
use std::time::Instant;

use candle_core::{Device, Result, Tensor};

use super::forward::ForwardOps;
use crate::nn::{Classifier, ConvBnAct, SqueezeExcite};

/// One kind of operation's share of a profiled call.
#[derive(Debug, Clone, PartialEq)]
pub struct ProfileRow {
    /// What ran: `depthwise 3x3 s2`, `pointwise 1x1`, `dense 3x3`, `squeeze-excitation`, ...
    pub op: String,
    /// How many times it ran per call.
    pub calls: usize,
    /// Its seconds per call, summed over its runs.
    pub seconds: f64,
}

/// The rows of profiled calls, accumulated.
#[derive(Debug, Clone, Default)]
pub struct Profile {
    rows: Vec<ProfileRow>,
    index: HashMap<String, usize>,
    /// Calls profiled so far.
    pub calls: usize,
}

impl Profile {
    fn add(&mut self, op: String, seconds: f64) {
        let i = match self.index.get(&op) {
            Some(&i) => i,
            None => {
                self.rows.push(ProfileRow {
                    op: op.clone(),
                    calls: 0,
                    seconds: 0.0,
                });
                self.index.insert(op, self.rows.len() - 1);
                self.rows.len() - 1
            }
        };
        self.rows[i].calls += 1;
        self.rows[i].seconds += seconds;
    }

    /// Per call (the sums divided by the calls profiled), the largest share first.
    pub fn rows(&self) -> Vec<ProfileRow> {
        let n = self.calls.max(1);
        let mut rows: Vec<ProfileRow> = self
            .rows
            .iter()
            .map(|r| ProfileRow {
                op: r.op.clone(),
                calls: r.calls / n,
                seconds: r.seconds / n as f64,
            })
            .collect();
        rows.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
        rows
    }
}

/// What a conv-bn-act layer is, for the profile.
fn layer_kind(l: &ConvBnAct) -> String {
    let c = &l.conv.spec;
    let k = c.kernel;
    let stride = if c.stride > 1 {
        format!(" s{}", c.stride)
    } else {
        String::new()
    };
    let kind = if c.is_depthwise() {
        "depthwise"
    } else if c.groups > 1 {
        "grouped"
    } else if k == 1 {
        return format!("pointwise 1x1{stride}");
    } else {
        "dense"
    };
    format!("{kind} {k}x{k}{stride}")
}

/// `ops`, each operation timed to the device's completion into `profile`.
pub(crate) struct Profiled<'a, O> {
    pub inner: &'a mut O,
    pub profile: &'a mut Profile,
    pub device: Device,
}

impl<O> Profiled<'_, O> {
    fn timed<T>(
        &mut self,
        op: impl FnOnce() -> String,
        run: impl FnOnce(&mut O) -> Result<T>,
    ) -> Result<T> {
        let t0 = Instant::now();
        let out = run(self.inner)?;
        self.device.synchronize()?;
        self.profile.add(op(), t0.elapsed().as_secs_f64());
        Ok(out)
    }
}

impl<O: ForwardOps> ForwardOps for Profiled<'_, O> {
    type Map = O::Map;

    fn input(&mut self, x: &Tensor) -> Result<Self::Map> {
        self.timed(|| "input layout".into(), |o| o.input(x))
    }

    fn conv_bn_act(
        &mut self,
        l: &ConvBnAct,
        x: &Self::Map,
        residual: Option<&Self::Map>,
        squeeze: bool,
    ) -> Result<Self::Map> {
        self.timed(|| layer_kind(l), |o| o.conv_bn_act(l, x, residual, squeeze))
    }

    fn fuses_residual(&self, l: &ConvBnAct) -> bool {
        self.inner.fuses_residual(l)
    }

    fn squeeze_excite(&mut self, se: &SqueezeExcite, x: Self::Map) -> Result<Self::Map> {
        self.timed(|| "squeeze-excitation".into(), |o| o.squeeze_excite(se, x))
    }

    fn add_residual(
        &mut self,
        y: Self::Map,
        x: &Self::Map,
        keep: Option<Vec<f32>>,
    ) -> Result<Self::Map> {
        self.timed(|| "residual add".into(), |o| o.add_residual(y, x, keep))
    }

    fn batch(&self, x: &Self::Map) -> Result<usize> {
        self.inner.batch(x)
    }

    fn output(&mut self, x: &Self::Map) -> Result<Tensor> {
        self.timed(|| "stage output".into(), |o| o.output(x))
    }

    fn pool(&mut self, x: Self::Map) -> Result<Tensor> {
        self.timed(|| "global pool".into(), |o| o.pool(x))
    }

    fn classify(&mut self, c: &Classifier, pooled: &Tensor) -> Result<Tensor> {
        self.timed(|| "classifier".into(), |o| o.classify(c, pooled))
    }

    fn routing(&mut self, r: &Classifier, x: &Self::Map) -> Result<Tensor> {
        self.timed(|| "CondConv routing".into(), |o| o.routing(r, x))
    }

    fn cond_conv_bn_act(
        &mut self,
        l: &ConvBnAct,
        x: &Self::Map,
        routing: &Tensor,
    ) -> Result<Self::Map> {
        self.timed(
            || format!("CondConv {}", layer_kind(l)),
            |o| o.cond_conv_bn_act(l, x, routing),
        )
    }
}
