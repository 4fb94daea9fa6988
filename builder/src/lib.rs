//! The ksplice builder: from two kernel versions to a signed live update.
