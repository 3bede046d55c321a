#!/usr/bin/perl
# tests/fidelity/sa_oracle.pl -- SpamAssassin (Debian's, the installed
# Mail::SpamAssassin) as the oracle of the rule-fidelity check: it reads the
# same rule files as Moat's rules plugin (/usr/share/spamassassin and the
# private site directory SITE, see fidelity.py), local tests only, Bayes off,
# score set 2 (the column Moat's rules read by default), and prints what
# each message hit.
#
#   sa_oracle.pl SITE STATE --rules          one JSON line per rule SpamAssassin
#                                            defines: name, type, eval, score
#   sa_oracle.pl SITE STATE < LIST           for each message file named on a
#                                            line of LIST, one JSON line:
#                                            {"file":..., "hits":[...],
#                                            "score":..., "envfrom":...}
#
# hits holds every rule that hit, the __ sub-rules included; envfrom is the
# envelope sender SpamAssassin made out from the header (Moat gets it from
# MAIL FROM, so the check hands it this one). The messages
# are read as they are (the caller has already made them the bytes Moat
# sees). Nothing here asks the network.
use strict;
use warnings;
use Mail::SpamAssassin;
use Mail::SpamAssassin::Conf;
use JSON::PP;

my ($site, $state, $mode) = @ARGV;
die "usage: sa_oracle.pl SITE STATE [--rules] < LIST\n" unless defined $state;

my $sa = Mail::SpamAssassin->new({
    rules_filename       => '/usr/share/spamassassin',
    site_rules_filename  => $site,
    userprefs_filename   => "$site/user_prefs.none",
    userstate_dir        => $state,
    home_dir_for_helpers => $state,
    local_tests_only     => 1,
    dont_copy_prefs      => 1,
});
$sa->init(1);
my $conf = $sa->{conf};
$conf->set_score_set(2);            # Moat reads column 2 (Bayes on, network off)
my $json = JSON::PP->new->canonical;

if (defined $mode && $mode eq '--rules') {
    # the eval tests' function and arguments, from the per-type tables
    my %evals;
    for my $kind (qw(head_evals body_evals rawbody_evals full_evals uri_evals rbl_evals)) {
        for my $prio (values %{$conf->{$kind} || {}}) {
            next unless ref $prio eq 'HASH';
            $evals{$_} = $prio->{$_} for keys %$prio;
        }
    }
    for my $name (sort keys %{$conf->{test_types}}) {
        my $t = $conf->{test_types}->{$name};
        my $eval = ($t % 2) == 1 && $t != $Mail::SpamAssassin::Conf::TYPE_META_TESTS;
        my $src = $evals{$name};
        print $json->encode({ name => $name,
                              type => $Mail::SpamAssassin::Conf::TYPE_AS_STRING{$t} // "$t",
                              eval => $eval ? JSON::PP::true : JSON::PP::false,
                              test => $eval && ref $src eq 'ARRAY' ? "$src->[0](" . join(',', map { defined $_ ? "'$_'" : 'undef' } @{$src->[1] || []}) . ")" : undef,
                              score => 0 + ($conf->{scores}->{$name} // 0),
                              tflags => $conf->{tflags}->{$name} // '' }), "\n";
    }
    exit 0;
}

$| = 1;
while (my $file = <STDIN>) {
    chomp $file;
    next unless length $file;
    open(my $fh, '<:raw', $file) or do { print $json->encode({ file => $file, error => "$!" }), "\n"; next };
    # (only the read is in slurp mode: SpamAssassin's own chomp needs $/)
    my $text = do { local $/; <$fh> };
    close $fh;
    my $mail = $sa->parse($text);
    my $st = $sa->check($mail);
    my @hits = grep { length } split(/,/, $st->get_names_of_tests_hit());
    push @hits, map { s/\(\d+\)$//r } grep { length } split(/,/, $st->get_names_of_subtests_hit() // '');
    my %seen;
    @hits = sort grep { !$seen{$_}++ } @hits;
    my $envfrom = $st->get_envelope_from();
    print $json->encode({ file => $file, hits => \@hits, score => 0 + $st->get_score(),
                          envfrom => $envfrom // '' }), "\n";
    $st->finish();
    $mail->finish();
}
