//! The five QoS classes of dwcp and their default DSCP code points.

/// Number of QoS classes; class ids are `0..QOS_CLASSES`.
pub const QOS_CLASSES: usize = 5;

/// A traffic class, highest priority first. The discriminant is the class id used in maps.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum QosClass {
    Critical = 0,
    Realtime = 1,
    Interactive = 2,
    Bulk = 3,
    BestEffort = 4,
}

impl QosClass {
    pub const ALL: [QosClass; QOS_CLASSES] = [
        QosClass::Critical,
        QosClass::Realtime,
        QosClass::Interactive,
        QosClass::Bulk,
        QosClass::BestEffort,
    ];

    pub const fn from_id(id: u8) -> Option<QosClass> {
        match id {
            0 => Some(QosClass::Critical),
            1 => Some(QosClass::Realtime),
            2 => Some(QosClass::Interactive),
            3 => Some(QosClass::Bulk),
            4 => Some(QosClass::BestEffort),
            _ => None,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            QosClass::Critical => "critical",
            QosClass::Realtime => "realtime",
            QosClass::Interactive => "interactive",
            QosClass::Bulk => "bulk",
            QosClass::BestEffort => "best-effort",
        }
    }

    /// Default DSCP (RFC 4594 service classes): CS6 for network-critical control, EF for
    /// real-time, AF41 for interactive, AF11 for bulk, DF for best effort.
    pub const fn default_dscp(self) -> u8 {
        match self {
            QosClass::Critical => 48,
            QosClass::Realtime => 46,
            QosClass::Interactive => 34,
            QosClass::Bulk => 10,
            QosClass::BestEffort => 0,
        }
    }
}
