//! Where an inference's or a training step's time goes: the forward walk of any plan, or the
//! training-step walk of the cpu-step and cuda-step plans, each layer operation timed to the
//! device's completion and summed by what it is (a depthwise 3x3 at stride 2, a 1x1 GEMM, a
//! dense 3x3 on patches, a squeeze-excitation, forward and backward, ...): `effnet bench
//! --profile`.
//!
//! Each operation is followed by a synchronization of the device (a no-op on the CPU), so on
//! a GPU the walk runs one operation at a time, without the overlap of launches with
//! compute: the per-operation figures add up to more than an unprofiled call takes, and are
//! for finding the largest shares, not for the throughput (which `bench` measures without).

use std::collections::HashMap;
use std::rc::Rc;
use std::time::Instant;

use candle_core::{Device, Result, Tensor};

use super::forward::ForwardOps;
use super::step::StepOps;
use crate::nn::{Classifier, ConvBnAct, Param, SqueezeExcite};

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
    /// Seconds of every row together.
    timed: f64,
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
        self.timed += seconds;
    }

    /// Time a whole call of `run`, each of its operations timed by `run` itself into this
    /// profile; what the operations leave of the call's time is added as `rest` (the loss, the
    /// classifier, ...). `device` is synchronized first and last.
    pub(crate) fn whole_call<T>(
        &mut self,
        device: &Device,
        rest: &str,
        run: impl FnOnce(&mut Self) -> Result<T>,
    ) -> Result<T> {
        device.synchronize()?;
        let (t0, before) = (Instant::now(), self.timed);
        let out = run(self)?;
        device.synchronize()?;
        let untimed = t0.elapsed().as_secs_f64() - (self.timed - before);
        self.add(rest.into(), untimed.max(0.0));
        self.calls += 1;
        Ok(out)
    }

    /// `seconds` of `op` in the current call (an operation timed outside the walk, such as the
    /// optimizer's update).
    pub fn add_timed(&mut self, op: &str, seconds: f64) {
        self.add(op.into(), seconds);
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

/// A training step's operations timed the same way (the layers' forward and backward by
/// kind, the squeeze-excitations', the residuals', pooling and the gradients' collection).
pub(crate) struct ProfiledStep<'a, O> {
    pub inner: O,
    pub profile: &'a mut Profile,
    pub device: Device,
}

impl<O> ProfiledStep<'_, O> {
    fn timed<T>(
        &mut self,
        op: impl FnOnce() -> String,
        run: impl FnOnce(&mut O) -> Result<T>,
    ) -> Result<T> {
        let t0 = Instant::now();
        let out = run(&mut self.inner)?;
        self.device.synchronize()?;
        self.profile.add(op(), t0.elapsed().as_secs_f64());
        Ok(out)
    }
}

impl<O: StepOps> StepOps for ProfiledStep<'_, O> {
    type Map = O::Map;
    type LayerTape = O::LayerTape;
    type SeTape = O::SeTape;

    fn input(&mut self, x: &Tensor) -> Result<Self::Map> {
        self.timed(|| "input layout".into(), |o| o.input(x))
    }

    fn layer_forward(
        &mut self,
        l: &ConvBnAct,
        x: Rc<Self::Map>,
    ) -> Result<(Self::LayerTape, Self::Map)> {
        self.timed(
            || format!("forward {}", layer_kind(l)),
            |o| o.layer_forward(l, x),
        )
    }

    fn layer_backward(
        &mut self,
        l: &ConvBnAct,
        t: &Self::LayerTape,
        d: Self::Map,
        need_dx: bool,
    ) -> Result<Option<Self::Map>> {
        self.timed(
            || format!("backward {}", layer_kind(l)),
            |o| o.layer_backward(l, t, d, need_dx),
        )
    }

    fn se_forward(
        &mut self,
        se: &SqueezeExcite,
        x: Rc<Self::Map>,
    ) -> Result<(Self::SeTape, Self::Map)> {
        self.timed(
            || "forward squeeze-excitation".into(),
            |o| o.se_forward(se, x),
        )
    }

    fn se_backward(
        &mut self,
        se: &SqueezeExcite,
        t: &Self::SeTape,
        d: Self::Map,
    ) -> Result<Self::Map> {
        self.timed(
            || "backward squeeze-excitation".into(),
            |o| o.se_backward(se, t, d),
        )
    }

    fn residual(&mut self, y: Self::Map, x: &Self::Map, keep: Option<&[f32]>) -> Result<Self::Map> {
        self.timed(|| "residual add".into(), |o| o.residual(y, x, keep))
    }

    fn scale_images(&mut self, d: Self::Map, keep: &[f32]) -> Result<Self::Map> {
        self.timed(|| "drop-path scale".into(), |o| o.scale_images(d, keep))
    }

    fn add(&mut self, a: Self::Map, b: &Self::Map) -> Result<Self::Map> {
        self.timed(|| "gradient add".into(), |o| o.add(a, b))
    }

    fn duplicate(&mut self, d: &Self::Map) -> Result<Self::Map> {
        self.timed(|| "gradient copy".into(), |o| o.duplicate(d))
    }

    fn batch(&self, x: &Self::Map) -> usize {
        self.inner.batch(x)
    }

    fn pool(&mut self, y: Self::Map) -> Result<(Tensor, [usize; 4])> {
        self.timed(|| "global pool".into(), |o| o.pool(y))
    }

    fn unpool(&mut self, d: &Tensor, dims: [usize; 4]) -> Result<Self::Map> {
        self.timed(|| "global pool backward".into(), |o| o.unpool(d, dims))
    }

    fn add_grad(&mut self, name: String, g: &Tensor) -> Result<()> {
        self.inner.add_grad(name, g)
    }

    fn into_grads(self, params: &[Param]) -> Result<Vec<Tensor>> {
        let t0 = Instant::now();
        let grads = self.inner.into_grads(params)?;
        self.device.synchronize()?;
        self.profile
            .add("gradients collected".into(), t0.elapsed().as_secs_f64());
        Ok(grads)
    }
}
