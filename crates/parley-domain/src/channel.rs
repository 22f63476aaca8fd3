//! The text channels customers write in.

use std::fmt;
use std::str::FromStr;

/// A text channel. `as_str` names are stable: they appear in subjects, keys and rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Channel {
    Api,
    WebChat,
    Email,
    Sms,
    Telegram,
    WhatsApp,
    Viber,
}

impl Channel {
    pub const ALL: [Channel; 7] = [
        Channel::Api,
        Channel::WebChat,
        Channel::Email,
        Channel::Sms,
        Channel::Telegram,
        Channel::WhatsApp,
        Channel::Viber,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Channel::Api => "api",
            Channel::WebChat => "webchat",
            Channel::Email => "email",
            Channel::Sms => "sms",
            Channel::Telegram => "telegram",
            Channel::WhatsApp => "whatsapp",
            Channel::Viber => "viber",
        }
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The name is not one of [`Channel::as_str`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown channel {0:?} (expected one of api, webchat, email, sms, telegram, whatsapp, viber)")]
pub struct UnknownChannel(pub String);

impl FromStr for Channel {
    type Err = UnknownChannel;
    fn from_str(s: &str) -> Result<Self, UnknownChannel> {
        Channel::ALL.into_iter().find(|c| c.as_str() == s).ok_or_else(|| UnknownChannel(s.chars().take(40).collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for c in Channel::ALL {
            assert_eq!(c.as_str().parse::<Channel>().unwrap(), c);
        }
        assert!("fax".parse::<Channel>().is_err());
    }
}
