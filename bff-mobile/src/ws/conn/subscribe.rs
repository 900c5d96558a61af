//! `sub` on a ready socket: which route a client topic leads to (a demo topic of
//! [`super::super::topics`], else a catalog channel of [`super::super::channels`], judged for
//! the signed-in user), every refusal in the protocol's order, then starting the subscription
//! through the hub. And the other half of channel access: when a re-authentication brings other
//! claims, channel subscriptions whose rule no longer admits the user end with `error`
//! `forbidden`, so a socket never goes on receiving what its current token would be refused.

use demo_api::UserId;
use mobile_proto::{ServerMsg, code, topic};

use super::super::channels;
use super::super::subscriptions;
use super::super::topics;
use super::super::transport::Io;
use super::Conn;

impl Conn {
    pub(super) async fn subscribe(&mut self, io: &mut Io, user: &UserId, sub: mobile_proto::Sub) {
        let name = sub.topic;
        let routed = match topics::route(user, &name) {
            Some(route) => Ok((route, None)),
            // A malformed rate topic is the demo's, not a channel name with a bad byte.
            None if name.starts_with(topic::RATES_PREFIX) || name == topic::CONVERSIONS => {
                Err((code::UNKNOWN_TOPIC, "no such topic".to_owned()))
            }
            None => channels::route(&self.gw.parts.catalog, user, &self.claims, &name)
                .map(|(route, access)| (route, Some(access)))
                .map_err(|r| (r.code, r.message)),
        };
        let (route, access) = match routed {
            Ok(r) => r,
            Err((code, message)) => {
                let msg = ServerMsg::topic_error(&name, code, message);
                return self.reply(io, &msg);
            }
        };
        if sub
            .resume
            .as_ref()
            .is_some_and(|p| p.epoch > i64::MAX as u64 || p.offset > i64::MAX as u64)
        {
            // Positions the server hands out are always below 2^63 (the spec promises it, so
            // they fit a Kotlin Long); one above is not ours, and is never echoed back.
            let msg = ServerMsg::topic_error(
                &name,
                code::INVALID_ARGS,
                "`resume` is not a position this server gave: positions are below 2^63",
            );
            return self.reply(io, &msg);
        }
        if self.subs.contains(&name) {
            let msg = ServerMsg::topic_error(&name, code::ALREADY_SUBSCRIBED, "already subscribed");
            return self.reply(io, &msg);
        }
        if self.subs.len() >= self.config().max_subscriptions as usize {
            let msg = ServerMsg::topic_error(
                &name,
                code::TOO_MANY_SUBSCRIPTIONS,
                format!("at most {} subscriptions", self.config().max_subscriptions),
            );
            return self.reply(io, &msg);
        }
        let limiter = &self.gw.parts.limiter;
        if let Err(r) = limiter
            .check_subscription(Some(user.as_str()), self.peer)
            .await
        {
            let retry = u32::try_from(r.millis()).unwrap_or(u32::MAX);
            return self.reply(io, &ServerMsg::rate_limited(None, Some(&name), retry));
        }
        let Some(started) = subscriptions::start(&self.gw.parts.hub, &route.hub, sub.resume).await
        else {
            let msg = ServerMsg::topic_error(
                &name,
                code::EVENTS_UNAVAILABLE,
                "the topic's event source is unavailable; retry later",
            );
            return self.reply(io, &msg);
        };
        let position = started.position;
        self.reply(
            io,
            &ServerMsg::Subbed(mobile_proto::Subbed {
                topic: name,
                epoch: position.epoch,
                offset: position.offset,
            }),
        );
        let frames = self.gw.frames.of(&route);
        self.subs.add(frames, access, started);
    }

    /// After a re-authentication of `user` (the same user, maybe other claims): ends every
    /// channel subscription the new claims no longer admit, each answered by `error` `forbidden`
    /// with its topic. Nothing of it is delivered after this (its stream is dropped with it).
    pub(super) fn recheck_channels(&mut self, io: &mut Io, user: &UserId) {
        let claims = self.claims.clone();
        for name in self.subs.retain_access(|a| a.admits(user, &claims)) {
            let msg = ServerMsg::topic_error(
                &name,
                code::FORBIDDEN,
                "the new token's claims no longer admit this channel: its subscription ended",
            );
            self.reply(io, &msg);
        }
    }
}
