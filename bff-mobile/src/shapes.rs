//! Demo values (`demo_api`) in the shapes of the protocol (`mobile_proto::data`): the one
//! translation, used alike by call results ([`crate::calls`]) and by event frames
//! (`ws::events`). Pure functions: no I/O, no errors, no encoding (the codec encodes).

use mobile_proto::data;

/// A rate in the protocol's shape.
pub(crate) fn rate(r: &demo_api::Rate) -> data::Rate {
    data::Rate {
        pair: r.pair.to_string(),
        rate: r.rate.to_string(),
        seq: r.seq,
    }
}

/// A conversion in the protocol's shape.
pub(crate) fn conversion(c: &demo_api::Conversion) -> data::Conversion {
    data::Conversion {
        id: c.id.clone(),
        from: c.from.to_string(),
        to: c.to.to_string(),
        amount: c.amount.to_string(),
        rate: c.rate.to_string(),
        converted: c.converted.to_string(),
        at: c.at.clone(),
    }
}
