//! TEMPORARY stub until the real stack depot lands.
#![allow(missing_docs, dead_code)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub(crate) struct StackId(u32);
impl StackId {
    pub(crate) const NONE: StackId = StackId(0);
    pub(crate) fn from_raw(v: u32) -> StackId {
        StackId(v)
    }
    pub(crate) fn as_raw(self) -> u32 {
        self.0
    }
}
#[derive(Clone, Debug)]
pub struct ResolvedFrame {
    pub ip: usize,
    pub function: Option<String>,
    pub file: Option<String>,
    pub line: Option<u32>,
}
pub(crate) fn capture(_skip: usize) -> StackId {
    StackId::NONE
}
pub(crate) fn resolve(_id: StackId) -> Vec<ResolvedFrame> {
    Vec::new()
}
pub(crate) fn user_frames(f: Vec<ResolvedFrame>) -> Vec<ResolvedFrame> {
    f
}
pub(crate) fn format_frames(_f: &[ResolvedFrame]) -> String {
    String::new()
}
pub(crate) fn set_enabled(_on: bool) {}
pub(crate) fn set_depth(_n: usize) {}
