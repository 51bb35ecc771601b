# Crash recovery: a run whose server goes down (immediate shutdown, or a
# SIGKILLed worker that makes the postmaster restart the cluster) is
# reported interrupted and finishes on resume with every record exactly
# once.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use Digest::MD5 qw(md5_hex);
use File::Basename qw(dirname);
use Time::HiRes qw(sleep);

# run by `make prove_installcheck` from the top of the source tree
# (test/tap/run.sh passes both)
$ENV{PYTHON} ||= 'python3';
$ENV{MOCK_API_SCRIPT} ||= 'test/mock_api.py';
my $mock_dir = dirname($ENV{MOCK_API_SCRIPT});

my $n = 10000;
my $mock_port = 18180 + int(rand(500));
my $mock = IPC::Run::start([ $ENV{PYTHON}, $ENV{MOCK_API_SCRIPT}, '--port', $mock_port ],
	'>', \my $mock_out, '2>', \my $mock_err);
for (1 .. 50) { last if $mock_out =~ /listening/; $mock->pump_nb; select(undef, undef, undef, 0.1); }
like($mock_out, qr/listening/, 'mock API started');

# the expected contents, from the data set's own generator
my @names = split /\n/, `$ENV{PYTHON} -c "import sys; sys.path.insert(0, '$mock_dir'); import mock_api; [print(mock_api.record(i)['Name'].replace(chr(10), ' ')) for i in range(1, $n + 1)]"`;
is(scalar(@names), $n, 'expected names generated');
# the generator's output is UTF-8 bytes, as the server's md5() sees them
my $expected_md5 = md5_hex(join("\n", map { ($_ + 1) . '|' . $names[$_] } 0 .. $n - 1));

my $node = PostgreSQL::Test::Cluster->new('crash');
$node->init;
$node->append_conf('postgresql.conf', "max_worker_processes = 8\nrestart_after_crash = on\n");
$node->start;
$node->safe_psql('postgres', qq{
	CREATE EXTENSION etl_exec;
	CREATE TABLE patients (patientid int, name text);
	INSERT INTO dw_etl_jobs (job_id, name, url, target_table, page_size, checkpoint_interval_seconds, concurrency,
	                         pagination_options)
	VALUES (1, 'crash', 'http://127.0.0.1:$mock_port/odata/Patients?n=$n&delay_ms=60', 'patients', 200, 0, 1,
	        '{"total_path": "\$.\\"\@odata.count\\""}');
});

sub wait_loaded
{
	my ($run_id, $min) = @_;
	$node->poll_query_until('postgres',
		"SELECT records_loaded >= $min AND status = 'running' FROM dw_etl_runs WHERE run_id = $run_id")
	  or die "run $run_id did not get going";
}

sub check_exact
{
	my ($what) = @_;
	is($node->safe_psql('postgres', 'SELECT count(*), count(DISTINCT patientid) FROM patients'),
		"$n|$n", "$what: every record once");
	is($node->safe_psql('postgres',
			"SELECT md5(string_agg(patientid || '|' || replace(name, E'\\n', ' '), E'\\n' ORDER BY patientid)) FROM patients"),
		$expected_md5, "$what: contents match the source");
}

# 1. immediate shutdown in the middle of a run
my $run1 = $node->safe_psql('postgres', 'SELECT etl_execute_job(1, timeout := 600)');
wait_loaded($run1, 1000);
# the worker commits asynchronously: let the WAL writer (every 200 ms) put
# those commits on disk, or the immediate stop may leave none of them
sleep 0.5;
$node->stop('immediate');
$node->start;
is($node->safe_psql('postgres', "SELECT etl_wait_run($run1, 0)"), 'interrupted',
	'after an immediate shutdown the run is interrupted');
my ($loaded, $rows) = split /\|/, $node->safe_psql('postgres',
	"SELECT records_loaded, (SELECT count(*) FROM patients) FROM dw_etl_runs WHERE run_id = $run1");
cmp_ok($loaded, '>', 0, 'some records were checkpointed before the shutdown');
is($rows, $loaded, 'the table holds exactly the checkpointed records');
is($node->safe_psql('postgres', 'SELECT etl_resume_pending()'), $run1, 'etl_resume_pending resumes it');
is($node->safe_psql('postgres', "SELECT etl_wait_run($run1)"), 'succeeded', 'resumed run succeeds');
is($node->safe_psql('postgres', "SELECT resume_count FROM dw_etl_runs WHERE run_id = $run1"), '1', 'one resume');
check_exact('immediate shutdown');

# 2. SIGKILL of the worker: the postmaster restarts the whole cluster
$node->safe_psql('postgres', 'TRUNCATE patients');
my $run2 = $node->safe_psql('postgres', 'SELECT etl_execute_job(1, timeout := 600)');
wait_loaded($run2, 1000);
my $pid = $node->safe_psql('postgres', "SELECT worker_pid FROM dw_etl_runs WHERE run_id = $run2");
kill 'KILL', $pid;
sleep 1;
$node->poll_query_until('postgres', 'SELECT true') or die 'server did not come back';
is($node->safe_psql('postgres', "SELECT status FROM dw_etl_runs WHERE run_id = $run2"), 'running',
	'before anyone looks, the row still says running');
is($node->safe_psql('postgres', "SELECT etl_wait_run($run2, 0)"), 'interrupted',
	'a run whose worker was killed is interrupted once looked at');
like($node->safe_psql('postgres', "SELECT error_message FROM dw_etl_runs WHERE run_id = $run2"),
	qr/SELECT etl_resume_run\($run2\)/, 'the message says how to resume');
$node->safe_psql('postgres', "SELECT etl_resume_run($run2)");
is($node->safe_psql('postgres', "SELECT etl_wait_run($run2)"), 'succeeded', 'resumed run succeeds');
check_exact('SIGKILL');

$node->stop;
$mock->kill_kill;
done_testing();
