//! How the CLI prints an error: its context chain on one line, each cause once.
//!
//! Library errors that wrap another often print it in their own message too (`cannot read
//! 'm.pith': No such file or directory`) and also return it as their `source()`; joining the
//! chain naively would print the cause twice.

/// `err` and its causes joined by `": "`, leaving out a cause whose message the text before it
/// already ends with (a wrapper that printed its source last).
pub fn error_line(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let message = cause.to_string();
        if message.is_empty() || line.ends_with(&message) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&message);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    fn missing_file() -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::NotFound, "no such file")
    }

    #[test]
    fn a_cause_repeated_in_its_wrapper_message_is_printed_once() {
        let err = pith_format::FormatError::Io { path: "m.pith".into(), source: missing_file() };
        let err = Err::<(), _>(err).context("opening m.pith").unwrap_err();
        assert_eq!(err.chain().count(), 3, "context, the format error, the io error");
        assert_eq!(error_line(&err), "opening m.pith: cannot read 'm.pith': no such file");
    }

    #[test]
    fn causes_not_in_the_message_are_all_printed() {
        let err = anyhow::Error::new(missing_file()).context("reading calib/a.npy").context("calibrating");
        assert_eq!(error_line(&err), "calibrating: reading calib/a.npy: no such file");
    }
}
