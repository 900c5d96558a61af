//! What a subscriber of a bus saw through an outage, checked as it arrives (shared by the broker
//! restart tests of every bus).

use switchyard_core::bus::Delivery;
use switchyard_core::event::Position;

/// What a subscriber saw, checked as it arrives: events in offset order without duplicates,
/// gaps that start where it was.
#[derive(Default)]
pub struct Seen {
    pub cursor: Option<Position>,
    pub events: Vec<Position>,
    pub gaps: Vec<(Position, Position)>,
}

impl Seen {
    pub fn take(&mut self, d: Delivery) {
        match d {
            Delivery::Event(e) => {
                if let Some(c) = self.cursor {
                    assert!(
                        e.epoch == c.epoch && e.offset == c.offset + 1,
                        "event {:?} after {c:?}: out of order, duplicated, or a silent hole",
                        e.position()
                    );
                }
                self.cursor = Some(e.position());
                self.events.push(e.position());
            }
            Delivery::Gap { after, resume } => {
                if let Some(c) = self.cursor {
                    assert_eq!(after, c, "a gap must start where the subscriber was");
                }
                self.cursor = Some(resume);
                self.gaps.push((after, resume));
            }
        }
    }

    /// Whether the event at `p` was delivered or announced lost by a gap.
    pub fn accounts_for(&self, p: Position) -> bool {
        self.events.contains(&p)
            || self.gaps.iter().any(|(after, resume)| {
                if after.epoch == resume.epoch {
                    p.epoch == after.epoch && p.offset > after.offset && p.offset <= resume.offset
                } else {
                    (p.epoch == after.epoch && p.offset > after.offset)
                        || (p.epoch == resume.epoch && p.offset <= resume.offset)
                }
            })
    }
}
