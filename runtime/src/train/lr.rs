//! Learning-rate schedules, evaluated per step at fractional epochs.
//!
//! `t` is the training progress in epochs at the start of a step (`epoch + step / steps`) and
//! `dt` one step's share of an epoch. Warm-up is linear and ends at `warmup` epochs: a step's
//! rate is `peak * min(1, (t + dt) / warmup)`, so the first step is already above zero. After
//! it:
//! - `constant`: `peak`;
//! - `exponential(rate, every)`: `peak * rate^floor(t / every)` (stepwise, counted from the
//!   start of training, as automl's `exponential_decay(staircase=True)` under its warm-up);
//! - `cosine`: `peak * (1 + cos(pi * (t - warmup) / (epochs - warmup))) / 2`.

use effnet_compiler::ir::{LrDecay, LrSchedule};

/// The learning rate of the step that starts at epoch `t` (fractional), `dt` epochs long.
pub fn learning_rate(s: &LrSchedule, t: f64, dt: f64, epochs: usize) -> f64 {
    if s.warmup_epochs > 0.0 && t < s.warmup_epochs {
        return s.peak * ((t + dt) / s.warmup_epochs).min(1.0);
    }
    match s.decay {
        LrDecay::Constant => s.peak,
        LrDecay::Exponential { rate, every } => {
            if every > 0.0 {
                s.peak * rate.powf((t / every).floor())
            } else {
                s.peak
            }
        }
        LrDecay::Cosine => {
            let span = (epochs as f64 - s.warmup_epochs).max(f64::EPSILON);
            let p = ((t - s.warmup_epochs) / span).clamp(0.0, 1.0);
            s.peak * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_exponential_staircase() {
        let s = LrSchedule {
            peak: 0.256,
            warmup_epochs: 5.0,
            decay: LrDecay::Exponential {
                rate: 0.97,
                every: 2.4,
            },
        };
        assert!((learning_rate(&s, 0.0, 0.5, 350) - 0.256 * 0.1).abs() < 1e-12);
        assert!((learning_rate(&s, 4.5, 0.5, 350) - 0.256).abs() < 1e-12);
        // t = 5: floor(5 / 2.4) = 2 decays.
        assert!((learning_rate(&s, 5.0, 0.5, 350) - 0.256 * 0.97f64.powi(2)).abs() < 1e-12);
        assert!((learning_rate(&s, 7.19, 0.01, 350) - 0.256 * 0.97f64.powi(2)).abs() < 1e-12);
        assert!((learning_rate(&s, 7.2, 0.01, 350) - 0.256 * 0.97f64.powi(3)).abs() < 1e-12);
    }

    #[test]
    fn cosine_reaches_zero_at_the_end() {
        let s = LrSchedule {
            peak: 1.0,
            warmup_epochs: 1.0,
            decay: LrDecay::Cosine,
        };
        assert!((learning_rate(&s, 1.0, 0.1, 11) - 1.0).abs() < 1e-12);
        assert!((learning_rate(&s, 6.0, 0.1, 11) - 0.5).abs() < 1e-12);
        assert!(learning_rate(&s, 11.0, 0.1, 11).abs() < 1e-12);
    }
}
