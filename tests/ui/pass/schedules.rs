#![deny(warnings)]

use effnet::ScheduleConst;

#[effnet::model("../../fixtures/ok/schedules.effnet")]
pub struct Net;

const PAPER: ScheduleConst = Net::SCHEDULE_PAPER;

fn main() {
    assert_eq!(Net::SCHEDULES.len(), 3);
    assert_eq!(PAPER.stages.len(), 4);
    assert_eq!(Net::SCHEDULE_AUTOML.stages[0].image_size, 171);
    assert_eq!(Net::SCHEDULE_DEFAULT.stages[2].batch_size, Some(64));
    let found = ScheduleConst::find(Net::SCHEDULES, "automl").map(|s| s.epochs);
    assert_eq!(found, Some(350));
    assert_eq!(PAPER.stage_at(349).map(|s| s.image_size), Some(300));
}
