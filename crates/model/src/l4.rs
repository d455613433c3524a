//! The one transport protocol type: Service ports and NetworkPolicy ports (TCP, UDP,
//! SCTP), and the packets `flatnet trace` follows (ICMP too).

/// A packet's transport protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
    Sctp,
    Icmp,
}

impl Proto {
    /// A port's protocol as Kubernetes spells it (`TCP`, `UDP`, `SCTP`, or lower case);
    /// None for anything else, ICMP included: it has no ports.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "TCP" | "tcp" => Some(Self::Tcp),
            "UDP" | "udp" => Some(Self::Udp),
            "SCTP" | "sctp" => Some(Self::Sctp),
            _ => None,
        }
    }

    /// Any protocol a packet may have, in any case (`icmp` too).
    pub fn parse_packet(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "icmp" => Some(Self::Icmp),
            other => Self::parse(other),
        }
    }

    /// nftables' spelling.
    pub fn word(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Sctp => "sctp",
            Self::Icmp => "icmp",
        }
    }

    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Self::Tcp => 6,
            Self::Udp => 17,
            Self::Sctp => 132,
            Self::Icmp => 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Proto;

    #[test]
    fn ports_have_three_protocols_and_packets_four() {
        assert_eq!(Proto::parse("UDP"), Some(Proto::Udp));
        assert_eq!(Proto::parse("ICMP"), None);
        assert_eq!(Proto::parse("Tcp"), None, "Kubernetes spells it TCP");
        assert_eq!(Proto::parse_packet("ICMP"), Some(Proto::Icmp));
        assert_eq!(Proto::parse_packet("Sctp").map(Proto::number), Some(132));
    }
}
